"""What each stored file says about itself, so that the index can be rebuilt from the files alone.

- a result's ``.npz`` holds, besides its arrays, a member ``__replens__``: JSON with its key, kind,
  meta, creation time, each array's shape and dtype, and (for ``cached`` values) the codec tree;
- an upload ``blobs/ab/<sha256>`` has one sidecar per use, ``blobs/ab/<sha256>.<kind>.json``;
- a document (share-link spec, saved view, report) is ``docs/<kind>/<id>.json``.
"""
from __future__ import annotations

import json
import zipfile
from typing import Any, Mapping

import numpy as np

from .codec import RESERVED

FORMAT = 1
# What a damaged or foreign result file raises on reading (truncated zip, bad header, bad JSON).
DAMAGE = (OSError, EOFError, ValueError, KeyError, TypeError, zipfile.BadZipFile)


def write_npz(f, arrays: Mapping[str, np.ndarray], record: Mapping[str, Any]) -> None:
    """An ``.npz`` (uncompressed, never pickled) of ``arrays`` plus the record; names are free
    (``np.savez`` would refuse an array called ``file``)."""
    members = {RESERVED: np.frombuffer(json.dumps(record).encode(), np.uint8), **arrays}
    with zipfile.ZipFile(f, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, a in members.items():
            with zf.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(a), allow_pickle=False)


def result_record(key: str, kind: str, meta: dict, created: float, arrays: Mapping[str, np.ndarray],
                  tree: Any = None) -> dict:
    record = {"format": FORMAT, "key": key, "kind": kind, "meta": meta, "created": created,
              "arrays": {n: [list(a.shape), a.dtype.str] for n, a in arrays.items()}}
    if tree is not None:
        record["value"] = tree
    return record


def read_npz(f, key: str) -> tuple[dict[str, np.ndarray], dict | None]:
    """The arrays and the record of a result file, checked against each other and against ``key``;
    raises one of DAMAGE when the file is not the whole result it claims to be. Files written before
    records existed have none (None)."""
    from ..tabular import NPY_READ_LOCK

    with NPY_READ_LOCK, np.load(f, allow_pickle=False) as npz:
        names = [n for n in npz.files if n != RESERVED]
        record = json.loads(npz[RESERVED].tobytes()) if RESERVED in npz.files else None
        if record is not None:
            if record.get("key") != key:
                raise ValueError(f"the file holds result {str(record.get('key'))[:12]}, not {key[:12]}")
            if sorted(record["arrays"]) != sorted(names):
                raise ValueError(f"the file holds arrays {sorted(names)}, its record {sorted(record['arrays'])}")
        arrays = {n: npz[n] for n in names}
    if record is not None:
        for n, a in arrays.items():
            shape, dtype = record["arrays"][n]
            if list(a.shape) != shape or a.dtype.str != dtype:
                raise ValueError(f"array {n!r} is {a.dtype.str}{list(a.shape)}, its record says {dtype}{shape}")
    return arrays, record


def read_record(f) -> dict | None:
    """Only the record of a result file (for rebuilding the index without reading the arrays)."""
    from ..tabular import NPY_READ_LOCK

    with NPY_READ_LOCK, np.load(f, allow_pickle=False) as npz:
        return json.loads(npz[RESERVED].tobytes()) if RESERVED in npz.files else None


def scan(files) -> tuple[list[tuple], list[tuple], list[tuple], int]:
    """Index rows for every whole result, upload use and document under ``files``:
    (results, blobs, documents, files skipped as unreadable or written before records existed)."""
    results, blobs, docs, skipped = [], [], [], 0
    for rel in files.walk("objects"):
        key = rel.rsplit("/", 1)[-1].removesuffix(".npz")
        try:
            with files.open(rel) as f:
                r = read_record(f)
            if r is None or r["key"] != key:
                raise ValueError("no record")
            results.append((key, r["kind"], rel, json.dumps(r["meta"]), files.size(rel), r["created"]))
        except DAMAGE:
            skipped += 1
    for rel in files.walk("blobs"):
        if not rel.endswith(".json"):
            continue
        try:
            b = json.loads(files.read_bytes(rel))
            if not files.exists(f"blobs/{b['sha256'][:2]}/{b['sha256']}"):
                raise ValueError("the upload's bytes are gone")
            blobs.append((b["sha256"], b["kind"], b["name"], b["size"], json.dumps(b["meta"]), b["created"]))
        except DAMAGE:
            skipped += 1
    for rel in files.walk("docs"):
        try:
            d = json.loads(files.read_bytes(rel))
            docs.append((d["kind"], d["id"], d["name"], d["body"], d["created"], d["updated"]))
        except DAMAGE:
            skipped += 1
    return results, blobs, docs, skipped


def blob_sidecar(sha: str, kind: str, name: str, size: int, meta: str, created: float) -> bytes:
    return json.dumps({"sha256": sha, "kind": kind, "name": name, "size": size, "meta": json.loads(meta),
                       "created": created}).encode()


def doc_file(kind: str, doc_id: str, name: str, body: str, created: float, updated: float) -> bytes:
    return json.dumps({"kind": kind, "id": doc_id, "name": name, "body": body, "created": created,
                       "updated": updated}).encode()
