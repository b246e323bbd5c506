"""RepLens: compare the internal representations of two neural networks, layer by layer.

Run with ``streamlit run app.py``. The sidebar (model A, model B, dataset) lives in the URL, so the
address reproduces the view. Pages are listed explicitly; a page appears once it works.
"""
from pathlib import Path

import streamlit as st

HERE = Path(__file__).resolve().parent
LOGO = str(HERE / "assets" / "logo.svg")
st.set_page_config(page_title="RepLens", page_icon=LOGO, layout="wide")

from pages._shell import sidebar  # noqa: E402  (after set_page_config)

st.logo(LOGO)
st.session_state["_selection"] = sidebar()
pages = [
    st.Page(HERE / "pages" / "models.py", title="Models", icon=":material/view_column:", url_path="models", default=True),
]
st.navigation(pages).run()
