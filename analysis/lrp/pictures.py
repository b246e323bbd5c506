"""An uploaded picture as one input row of an image dataset (parsed with Pillow, never unpickled)."""
from __future__ import annotations

import numpy as np

from ..errors import UserInputError


def image_from_upload(data: bytes, filename: str, shape=(8, 8)) -> np.ndarray:
    """An uploaded picture as one input row: grey, resized to ``shape``, scaled to [0, 1], ink bright
    (as in digits: a dark-on-light drawing is inverted)."""
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(io.BytesIO(data)).convert("L").resize(shape[::-1], Image.Resampling.BOX)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise UserInputError(f"{filename} is not an image RepLens can read (PNG, JPEG, ...): {exc}") from exc
    x = np.asarray(img, dtype=np.float64) / 255.0
    if x.mean() > 0.5:
        x = 1.0 - x
    span = x.max() - x.min()
    x = (x - x.min()) / span if span > 0 else np.zeros_like(x)
    return x.reshape(1, -1).astype(np.float32)
