"""RepLens: compare the internal representations of two neural networks, layer by layer.

Run with ``streamlit run app.py``. The sidebar (model A, model B, dataset) lives in the URL, so the
address reproduces the view. Pages are listed explicitly; a page appears once it works.
"""
import streamlit as st

st.set_page_config(page_title="RepLens", page_icon="assets/logo.svg", layout="wide")

from pages._shell import sidebar  # noqa: E402  (after set_page_config)

st.logo("assets/logo.svg")
st.session_state["_selection"] = sidebar()
pages = [
    st.Page("pages/models.py", title="Models", icon=":material/view_column:", url_path="models", default=True),
]
st.navigation(pages).run()
