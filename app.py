"""RepLens: compare the internal representations of two neural networks, layer by layer.

Run with ``streamlit run app.py``. The sidebar (model A, model B, dataset) lives in the URL, so the
address reproduces the view. Pages are listed explicitly; a page appears once it works.

This file plays two roles. ``streamlit run`` imports it as a module to find ``app`` (an ``st.App``),
whose lifespan starts the job workers and the app's imports in the background as soon as the server
starts, while the browser is still loading (pages/_startup.py). Each browser session runs the file
as the Streamlit script (``__main__``).
"""
from pathlib import Path

import streamlit as st

HERE = Path(__file__).resolve().parent
LOGO = str(HERE / "assets" / "logo.svg")


if __name__ != "__main__":  # imported by `streamlit run` (or uvicorn) to find the ASGI app
    import contextlib
    import os

    from analysis import settings

    if not settings.hub_allowed(default=False):  # before anything imports huggingface_hub
        os.environ.setdefault("HF_HUB_OFFLINE", "1")

    @contextlib.asynccontextmanager
    async def _lifespan(_app):
        # Streamlit treats an app with a pages/ folder as a legacy multipage app until st.navigation
        # first runs; until then a deep link (/similarity) would run pages/similarity.py without this
        # shell. st.navigation clears this process-wide flag on its first call: clear it at start-up.
        from streamlit.runtime.pages_manager import PagesManager

        PagesManager.uses_pages_directory = False
        from analysis.numba_cache import precompile_in_background

        # numba's compiled code (UMAP) is kept in the store: compiled once per store, in the
        # background at the lowest priority when this store lacks it, never once per start
        compiler = precompile_in_background()
        from pages import _startup

        _startup.start()  # workers, imports, default data and models, in the background
        yield
        if compiler is not None and compiler.poll() is None:
            compiler.terminate()  # numba writes each cache file whole: what is done stays usable

    app = st.App(__file__, lifespan=_lifespan)

else:  # a browser session: the Streamlit script
    st.set_page_config(page_title="RepLens", page_icon=LOGO, layout="wide")

    from pages import _startup

    _startup.wait_for_imports()
    from analysis.safe_text import md
    from pages._share import open_short_link, share_panel
    from pages._shell import PageStop, sidebar

    st.logo(LOGO)
    open_short_link()  # ?a=<id>: expand the saved view into the URL before any widget exists
    if warning := st.session_state.pop("_link_warning", None):
        st.warning(md(warning))
    pages = [
        st.Page(HERE / "pages" / "models.py", title="Models", icon=":material/view_column:", url_path="home",
                default=True),  # served at "/" (url_path only reserves a name for it)
        st.Page(HERE / "pages" / "similarity.py", title="Similarity", icon=":material/grid_on:",
                url_path="similarity"),
        st.Page(HERE / "pages" / "projections.py", title="Projections", icon=":material/scatter_plot:",
                url_path="projections"),
        st.Page(HERE / "pages" / "functional_maps.py", title="Functional maps", icon=":material/hub:",
                url_path="functional-maps"),
        st.Page(HERE / "pages" / "attributions.py", title="Attributions", icon=":material/texture:",
                url_path="attributions"),
        st.Page(HERE / "pages" / "vector_field.py", title="Vector field", icon=":material/cyclone:",
                url_path="vector-field"),
        st.Page(HERE / "pages" / "sae.py", title="SAE features", icon=":material/blur_on:", url_path="sae"),
        st.Page(HERE / "pages" / "sweep.py", title="Training dynamics", icon=":material/timeline:",
                url_path="training-dynamics"),
        st.Page(HERE / "pages" / "merge.py", title="Merge & stitch", icon=":material/merge:", url_path="merge"),
        st.Page(HERE / "pages" / "report.py", title="Report", icon=":material/summarize:", url_path="report"),
        # Share links and the gallery address the Models page as /models, but Streamlit serves the
        # default page only at "/": /models opened with a "Page not found" dialog, then ran the
        # default page. The same script answers /models too, hidden from the navigation.
        st.Page(HERE / "pages" / "models.py", title="Models", url_path="models", visibility="hidden"),
    ]
    current = st.navigation(pages)
    st.session_state["_page"] = current.url_path or "models"  # before the sidebar: link checks need it
    st.session_state["_selection"] = sidebar()
    share_slot = st.sidebar.container()
    try:
        current.run()
    except PageStop:  # a page ended early (a button, a message): the share panel is still drawn
        pass
    finally:  # after the page (even one that stopped early): the link then holds every widget's value
        if st.session_state["_page"] != "report":
            with share_slot:
                share_panel(st.session_state["_page"])
        _startup.page_drawn()
