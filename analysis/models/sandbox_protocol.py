"""Messages between the server and its sandboxed model worker: frames of plain data, no pickle.

A message is one JSON header frame followed by ``header["arrays"]`` frames in the ``.npy`` format;
each frame is an 8-byte little-endian length and its bytes. Whatever comes back from the sandbox is
untrusted: frames longer than the reader's limit are refused before they are read, the header must
be a JSON object, and an array is rebuilt from its own bytes only after its header's shape and dtype
(plain numbers, no objects, no records) account for exactly those bytes, so a lying header allocates
nothing.

Standard library and numpy only: the worker imports this module on its own, inside the sandbox.
"""
from __future__ import annotations

import io
import json
import struct
from typing import Callable

import numpy as np

HEADER_LIMIT = 1 << 20
MAX_ARRAYS = 64  # a torch.export model sends its output and the outputs of the layers asked for
NUMERIC_KINDS = "biuf"  # bool, signed, unsigned, float


class ProtocolError(Exception):
    """A message that breaks the format (the other side is broken or hostile)."""


def frame(payload: bytes) -> bytes:
    return struct.pack("<Q", len(payload)) + payload


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def encode(header: dict, arrays=()) -> bytes:
    """One message as bytes: the header (with its array count) then each array."""
    arrays = list(arrays)
    parts = [frame(json.dumps({**header, "arrays": len(arrays)}).encode())]
    parts += [frame(npy_bytes(a)) for a in arrays]
    return b"".join(parts)


def read_frame(read_exact: Callable[[int], bytes], limit: int) -> bytes:
    (n,) = struct.unpack("<Q", read_exact(8))
    if n > limit:
        raise ProtocolError(f"a frame of {n} bytes is over the limit of {limit}")
    return read_exact(n)


def decode_array(payload: bytes) -> np.ndarray:
    """An array from its ``.npy`` bytes, checked against its header before anything is built."""
    from numpy.lib import format as npy_format

    f = io.BytesIO(payload)
    try:
        version = npy_format.read_magic(f)
        read_header = npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
        shape, fortran, dtype = read_header(f)
    except (ValueError, SyntaxError, TypeError) as exc:
        raise ProtocolError(f"not an npy array ({exc})") from exc
    if dtype.kind not in NUMERIC_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise ProtocolError(f"array of dtype {dtype} (only plain numbers are read)")
    if len(shape) > 8 or any(not isinstance(s, int) or s < 0 for s in shape):
        raise ProtocolError(f"array shape {shape!r}")
    body = payload[f.tell():]
    if int(np.prod(shape, dtype=object)) * dtype.itemsize != len(body):
        raise ProtocolError(f"array header {shape} {dtype} does not match its {len(body)} bytes")
    arr = np.frombuffer(body, dtype=dtype).reshape(shape, order="F" if fortran else "C")
    return arr.astype(dtype.newbyteorder("="), copy=True)  # native order, writable, owns its memory


def read_message(read_exact: Callable[[int], bytes], array_limit: int) -> tuple[dict, list[np.ndarray]]:
    try:
        header = json.loads(read_frame(read_exact, HEADER_LIMIT))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError("the header is not JSON") from exc
    if not isinstance(header, dict):
        raise ProtocolError("the header is not a JSON object")
    count = header.get("arrays", 0)
    if not isinstance(count, int) or not 0 <= count <= MAX_ARRAYS:
        raise ProtocolError(f"array count {count!r}")
    return header, [decode_array(read_frame(read_exact, array_limit)) for _ in range(count)]
