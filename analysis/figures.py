"""Plotly figures built from analysis results (no Streamlit here): pages and reports share them."""
from __future__ import annotations

import numpy as np

FONT = dict(family="Inter, Helvetica, Arial, sans-serif", size=13)
DOWNLOAD_CONFIG = {"toImageButtonOptions": {"format": "svg", "scale": 2}, "displaylogo": False}


def pixel_tile(image: np.ndarray, size: int = 64, invert: bool = True) -> np.ndarray:
    """An image in [0, 1] as a uint8 tile upscaled by nearest neighbour (crisp pixels), ink dark."""
    img = np.clip(np.asarray(image, dtype=np.float64), 0, 1)
    if invert:
        img = 1 - img
    factor = max(1, size // max(img.shape))
    return (np.kron(img, np.ones((factor, factor))) * 255).astype(np.uint8)
