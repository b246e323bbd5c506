"""The default view (no query parameters). No Streamlit import: the server warm-up reads it too."""
DEFAULT_A, DEFAULT_B, DEFAULT_DATA = "zoo:mlp-s0", "zoo:mlp-s1", "digits"
DEFAULT_N, DEFAULT_SEED = 500, 0
