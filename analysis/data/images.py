"""Image data: folders with one subfolder per class, and uploaded zips of such folders.

``images:/path/to/folder`` reads ``folder/<class>/<file>.png|jpg|...``; an uploaded ``.zip`` holds
the same layout (optionally under one top folder). Nothing is loaded up front: rows are files (or
zip members) opened when a batch needs them, so a folder of a million images costs its file list.

An uploaded zip is checked completely before it is stored, from headers first: its size, the
number of members, the sizes they declare unpacked (a zip bomb declares, or is caught lying by
zipfile's size and CRC checks), each image's width x height from its header before a pixel is
decoded (a decompression bomb is a small PNG that declares 60,000 x 60,000 pixels), then every
image is decoded once under those limits.
"""
from __future__ import annotations

import hashlib
import io
import os
import zipfile
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import UserInputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
MAX_IMAGES = 200_000  # in one upload
MAX_IMAGE_PIXELS = 40_000_000  # one image (PIL's own bomb limit is ~89 M, warning only)
UNPACKED_FACTOR = 4  # an upload may unpack to 4x the upload limit, as the README says
THUMB = 64


# --------------------------------------------------------------------------- single images
def as_pil(x, image_shape=None):
    """A PIL image from a file row (already PIL) or an array row in [0, 1] (grey, or H x W x C)."""
    from PIL import Image

    if isinstance(x, Image.Image):
        return x
    a = np.asarray(x, dtype=np.float32)
    if image_shape is not None and a.ndim == 1:
        a = a.reshape(image_shape)
    a = (np.clip(a, 0.0, 1.0) * 255).round().astype(np.uint8)
    return Image.fromarray(a, mode="L" if a.ndim == 2 else "RGB")


def thumbnail(img) -> tuple[np.ndarray, np.ndarray]:
    """A small (grey H x W, RGB H x W x 3) rendering in [0, 1] for galleries."""
    small = img.convert("RGB")
    small.thumbnail((THUMB, THUMB))
    rgb = np.asarray(small, dtype=np.float32) / 255.0
    return rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32), rgb


def to_grid(images, size: tuple[int, int], channels: int) -> np.ndarray:
    """Images resized to ``size`` (h, w) with ``channels`` (1 grey, 3 RGB), in [0, 1], (n, c, h, w)."""
    from PIL import Image

    mode = "L" if channels == 1 else "RGB"
    arrays = [np.asarray(im.convert(mode).resize((size[1], size[0]), Image.Resampling.BILINEAR), np.float32) / 255.0
              for im in images]
    x = np.stack(arrays)
    return x[:, None] if channels == 1 else x.transpose(0, 3, 1, 2)


def _decoded(read, name: str):
    """Open an image, checking its declared size before any pixel is decoded, then decode it."""
    from PIL import Image

    try:
        im = Image.open(io.BytesIO(read()))
        w, h = im.size
        if w * h > MAX_IMAGE_PIXELS:
            raise UserInputError(f"{name} declares {w} x {h} pixels, more than the {MAX_IMAGE_PIXELS:,} RepLens "
                                 "reads in one image (a decompression bomb, or an image to shrink first).")
        im.load()
    except UserInputError:
        raise
    except Image.DecompressionBombError as exc:  # PIL's own limit, met while reading the header
        raise UserInputError(f"{name} declares more pixels than RepLens reads in one image (a decompression "
                             "bomb, or an image to shrink first).") from exc
    except (OSError, ValueError, SyntaxError) as exc:
        raise UserInputError(f"{name} is not a readable image ({type(exc).__name__}).") from exc
    return im


# --------------------------------------------------------------------------- folders
def _class_files(names: list[str], where: str) -> tuple[list[str], list[str], np.ndarray]:
    """(files, class names, label codes) from relative paths ``class/file``: one subfolder per class."""
    pairs = []
    for rel in sorted(names):
        parts = rel.split("/")
        if os.path.splitext(parts[-1].lower())[1] not in IMAGE_SUFFIXES or parts[-1].startswith("."):
            continue
        if len(parts) != 2:
            raise UserInputError(f"{where}: {rel!r} is not in a class folder. Lay images out as "
                                 "<class>/<image>, one subfolder per class.")
        pairs.append((parts[0], rel))
    if not pairs:
        raise UserInputError(f"{where} holds no images ({', '.join(IMAGE_SUFFIXES)}) in class subfolders.")
    classes = sorted({c for c, _ in pairs})
    codes = {c: i for i, c in enumerate(classes)}
    return [r for _, r in pairs], classes, np.array([codes[c] for c, _ in pairs], dtype=np.int64)


def folder_source(path: str):
    """(reader, files, class names, labels, fingerprint) of an image folder on this machine. The
    fingerprint hashes each file's path, size and modification time (reading every image to hash
    it would cost as much as a pass of the model)."""
    root = Path(os.path.expanduser(path))
    if not root.is_dir():
        raise UserInputError(f"No image folder at {path!r}.")
    names, h = [], hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for f in sorted(filenames):
            full = Path(dirpath) / f
            rel = full.relative_to(root).as_posix()
            names.append(rel)
    files, classes, labels = _class_files(names, path)
    for rel in files:
        st = (root / rel).stat()
        h.update(f"{rel}|{st.st_size}|{st.st_mtime_ns}\n".encode())

    def read(rows: list[int]) -> list:
        return [_decoded(lambda p=root / files[r]: p.read_bytes(), files[r]) for r in rows]

    return read, files, classes, labels, h.hexdigest()


# --------------------------------------------------------------------------- zips
def _members(zf: zipfile.ZipFile, filename: str, limit: int) -> list[zipfile.ZipInfo]:
    infos = [i for i in zf.infolist() if not i.is_dir()]
    if len(infos) > MAX_IMAGES:
        raise UserInputError(f"{filename} has {len(infos):,} files; RepLens reads at most {MAX_IMAGES:,} images "
                             "from one upload. Split it, or use an image folder on the server.")
    unpacked = sum(i.file_size for i in infos)
    if unpacked > UNPACKED_FACTOR * limit:
        raise UserInputError(f"{filename} unpacks to {unpacked / 2**20:,.0f} MB, more than {UNPACKED_FACTOR}x the "
                             f"upload limit ({limit / 2**20:,.0f} MB); nothing was stored.")
    return infos


def _strip_top(names: list[str]) -> tuple[str, list[str]]:
    """A zip made of one folder (``cifar/<class>/<file>``) is read as if it were that folder."""
    tops = {n.split("/", 1)[0] for n in names}
    if len(tops) == 1 and all(n.count("/") >= 2 for n in names):
        top = tops.pop() + "/"
        return top, [n[len(top):] for n in names]
    return "", names


def zip_index(data_or_file, filename: str, check_images: bool) -> dict:
    """The class layout of an image zip; with ``check_images`` every image is also decoded (the
    upload check). Raises UserInputError for anything wrong."""
    from .. import tabular

    try:
        zf = zipfile.ZipFile(io.BytesIO(data_or_file) if isinstance(data_or_file, bytes) else data_or_file)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise UserInputError(f"{filename} is not a zip file ({type(exc).__name__}).") from exc
    with zf:
        infos = _members(zf, filename, tabular.max_upload_bytes())
        images = [i.filename for i in infos if os.path.splitext(i.filename.lower())[1] in IMAGE_SUFFIXES
                  and not os.path.basename(i.filename).startswith(".") and "__MACOSX/" not in i.filename]
        top, rel = _strip_top(images)
        files, classes, labels = _class_files(rel, filename)
        if check_images:
            for f in files:
                _decoded(lambda name=top + f: _read_member(zf, name), f)
    return {"top": top, "files": files, "classes": classes, "labels": labels}


def _read_member(zf: zipfile.ZipFile, name: str) -> bytes:
    info = zf.getinfo(name)
    with zf.open(info) as f:  # zipfile stops at the declared size and checks the CRC
        return f.read(info.file_size + 1)


def is_image_zip(filename: str) -> bool:
    return os.path.splitext(filename.lower())[1] == ".zip"


@lru_cache(maxsize=8)
def _open_zip(path: str) -> zipfile.ZipFile:
    return zipfile.ZipFile(path)


def zip_source(store, info: dict):
    """(reader, files, class names, labels, fingerprint) of an uploaded image zip in the store."""
    rel = f"blobs/{info['sha256'][:2]}/{info['sha256']}"
    location = store.files.location(rel)
    index = zip_index(store.files.open(rel), info["name"], check_images=False)
    top, files = index["top"], index["files"]

    def read(rows: list[int]) -> list:
        zf = _open_zip(str(location)) if isinstance(location, Path) else zipfile.ZipFile(store.files.open(rel))
        return [_decoded(lambda name=top + files[r]: _read_member(zf, name), files[r]) for r in rows]

    return read, files, index["classes"], index["labels"], info["sha256"]
