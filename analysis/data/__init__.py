"""Data sources: sklearn digits (the zoo's split), the shipped text set, synthetic sets, uploads.

``load(name, n=None, seed=0, split="test")`` returns a :class:`Dataset` whose rows are a
reproducible subsample (by ``n`` and ``seed``) of one source split. ``Dataset.indices`` are the
chosen rows of that split, so files aligned with the whole split (uploaded embeddings) can be
aligned with any subsample.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from .. import tabular
from ..errors import UserInputError
from .rows import LazyRows, select, take

ASSETS = Path(__file__).resolve().parents[2] / "assets"
TEXT_FILE = ASSETS / "text" / "sentences.csv"

DIGITS_TEST_SIZE = 597  # 1200 training rows, 597 test rows; stratified, random_state=0
SPLITS = ("test", "train", "all")
BUILTIN = ("digits", "text", "swiss_roll", "blobs", "digits_noisy")
NOISY_ROWS = 100_000
DESCRIPTIONS = {
    "digits": "scikit-learn digits: 8x8 grey images of handwritten digits 0-9 (the zoo's split)",
    "text": "RepLens text set: short sentences written for this project, 8 topics",
    "swiss_roll": "Swiss roll: 3-D points on a rolled sheet, labelled by position along the roll (6 bins)",
    "blobs": "Gaussian blobs: 16-D points around 6 centres, labelled by centre",
    "digits_noisy": "digits test images with Gaussian pixel noise (sigma 0.1): 100,000 rows for large-n runs",
}


@dataclass
class Dataset:
    """Rows of one data source, aligned with labels and renderable for display."""

    name: str  # the reference: "digits", "text", "upload:<sha>"
    kind: str  # "image", "text" or "vector"
    inputs: np.ndarray | list
    labels: np.ndarray | None
    label_names: list[str] | None
    indices: np.ndarray  # rows of the source split, sorted
    source_rows: int  # rows in the whole source split
    split: str = "test"
    seed: int = 0
    image_shape: tuple[int, int] | None = None
    description: str = ""
    # Sources read lazily (image folders, HF datasets): the content hash of the whole source, so the
    # rows' hash does not read every image; None: the rows' own content is hashed.
    fingerprint: str | None = None
    _sha: str | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def lazy(self) -> bool:
        """Rows are read from files when needed (image files, Arrow tables), not held in memory."""
        return isinstance(self.inputs, LazyRows)

    @property
    def n_features(self) -> int | None:
        if self.kind == "text" or (self.lazy and self.kind == "image"):
            return None
        if self.lazy:
            return int(np.asarray(self.inputs[0]).shape[-1]) if len(self) else None
        return int(np.asarray(self.inputs).shape[1])

    def batch(self, start: int, stop: int):
        """Inputs of rows ``start:stop`` (read from files for a lazy source)."""
        return take(self.inputs, start, stop)

    def subset(self, rows) -> "Dataset":
        """The dataset restricted to ``rows`` (a slice or an index array), in that order."""
        import copy

        part = copy.copy(self)
        part.inputs = select(self.inputs, rows)
        part.indices = self.indices[rows]
        part.labels = None if self.labels is None else self.labels[rows]
        part._sha = None
        return part

    def images(self, start: int, stop: int) -> list:
        """Rows ``start:stop`` of an image set as PIL images (arrays in [0, 1] become grey images)."""
        from .images import as_pil

        return [as_pil(x, self.image_shape) for x in self.batch(start, stop)]

    @property
    def sha256(self) -> str:
        """Content hash of the rows (inputs, labels and which rows), used in cache keys."""
        if self._sha is None:
            h = hashlib.sha256()
            h.update(f"{self.name}|{self.kind}|{self.split}".encode())
            if self.fingerprint is not None:
                h.update(f"|source={self.fingerprint}".encode())
            elif self.kind == "text":
                for t in self.inputs:
                    h.update(t.encode("utf-8") + b"\x00")
            else:
                h.update(np.ascontiguousarray(self.inputs).tobytes())
            if self.labels is not None:
                h.update(np.ascontiguousarray(self.labels).tobytes())
            h.update(np.ascontiguousarray(self.indices).tobytes())
            self._sha = h.hexdigest()
        return self._sha

    def label_of(self, i: int) -> str | None:
        if self.labels is None:
            return None
        code = int(self.labels[i])
        return self.label_names[code] if self.label_names else str(code)

    def render(self, i: int) -> dict:
        """One sample for display: {"kind": "image", "image": HxW array in [0,1]} or text/vector."""
        out = {"kind": self.kind, "label": self.label_of(i), "row": int(self.indices[i])}
        if self.kind == "text":
            out["text"] = self.inputs[i]
        elif self.kind == "image" and self.lazy:
            from .images import thumbnail

            out["image"], out["rgb"] = thumbnail(self.inputs[i])
        elif self.kind == "image":
            out["image"] = np.asarray(self.inputs[i]).reshape(self.image_shape)
        else:
            out["vector"] = np.asarray(self.inputs[i])
        return out

    def hover_text(self, i: int) -> str:
        """Short text for plot hovers."""
        label = self.label_of(i)
        if self.kind == "text":
            body = self.inputs[i]
        else:
            body = f"row {int(self.indices[i])}"
        return body if label is None else f"[{label}] {body}"

    def describe(self, asked: int | None = None) -> str:
        """One line: what the set is, which rows of it are used, its classes. ``asked``: the number
        of samples the user asked for, named when the set holds fewer."""
        what = self.description or self.name
        labels = f", {len(self.label_names)} classes" if self.label_names else ", no labels"
        split = "" if self.split == "all" else f" of the {self.split} split"
        if len(self) >= self.source_rows:
            fewer = f" (fewer than the {asked:,} asked for)" if asked and asked > len(self) else ""
            return f"{what} — all {len(self):,} rows{split}{fewer}{labels}"
        return f"{what} — {len(self):,} of {self.source_rows:,} rows{split} (seed {self.seed}){labels}"


# --------------------------------------------------------------------------- sources
SPLIT_FILE = ASSETS / "digits_split.json"


def digits_raw() -> tuple[np.ndarray, np.ndarray]:
    """sklearn's digits (1797 x 64 pixels in 0..16, labels), read from the CSV that scikit-learn ships
    without importing scikit-learn (its import costs ~2 s of app start-up)."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz" if spec and spec.origin else None
    if path is not None and path.exists():
        raw = np.loadtxt(path, delimiter=",")
        return raw[:, :-1], raw[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.data, d.target.astype(np.int64)


def compute_digits_split() -> dict[str, list[int]]:
    """The zoo's split, from scikit-learn (stratified, test_size=597, random_state=0)."""
    from sklearn.model_selection import train_test_split

    _, y = digits_raw()
    tr, te = train_test_split(np.arange(len(y)), test_size=DIGITS_TEST_SIZE, stratify=y, random_state=0)
    return {"train": sorted(int(i) for i in tr), "test": sorted(int(i) for i in te)}


@lru_cache(maxsize=1)
def digits_split() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The zoo's fixed split of digits: pixels scaled to [0, 1], float32, (n, 64). Row indices are
    shipped in assets/digits_split.json (a test checks them against scikit-learn)."""
    import json

    pixels, y = digits_raw()
    x = (pixels / 16.0).astype(np.float32)
    split = json.loads(SPLIT_FILE.read_text()) if SPLIT_FILE.exists() else compute_digits_split()
    tr, te = np.asarray(split["train"]), np.asarray(split["test"])
    return {"train": (x[tr], y[tr]), "test": (x[te], y[te]), "all": (x, y)}


@lru_cache(maxsize=1)
def _text_rows() -> tuple[list[str], np.ndarray, list[str]]:
    import pandas as pd

    df = pd.read_csv(TEXT_FILE)
    names = sorted(df["label"].unique())
    codes = df["label"].map({n: i for i, n in enumerate(names)}).to_numpy(np.int64)
    return df["text"].astype(str).tolist(), codes, names


def _swiss_roll():
    from sklearn.datasets import make_swiss_roll

    x, t = make_swiss_roll(n_samples=2000, noise=0.05, random_state=0)
    edges = np.quantile(t, np.linspace(0, 1, 7)[1:-1])
    return x.astype(np.float32), np.digitize(t, edges).astype(np.int64)


def _blobs():
    from sklearn.datasets import make_blobs

    x, y = make_blobs(n_samples=2000, n_features=16, centers=6, cluster_std=2.0, random_state=0)
    return x.astype(np.float32), y.astype(np.int64)


@lru_cache(maxsize=1)
def _digits_noisy():
    """Rows cycle through the digits test split; row i gets its own fixed noise."""
    x, y = digits_split()["test"]
    reps = -(-NOISY_ROWS // len(y))
    base = np.tile(x, (reps, 1))[:NOISY_ROWS]
    noise = np.random.default_rng(12345).normal(0, 0.1, size=base.shape).astype(np.float32)
    return np.clip(base + noise, 0, 1), np.tile(y, reps)[:NOISY_ROWS]


def _subsample(total: int, n: int | None, seed: int) -> np.ndarray:
    if n is None or n >= total:
        return np.arange(total)
    if n < 1:
        raise UserInputError(f"Number of samples must be at least 1 (got {n}).")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(total, size=n, replace=False))


def names() -> list[str]:
    return list(BUILTIN)


def load(name: str, n: int | None = None, seed: int = 0, split: str = "test", allow_local: bool = True,
         allow_hub: bool | None = None) -> Dataset:
    """Load a dataset by reference, subsampled to ``n`` rows (all if None) reproducibly by ``seed``.

    ``split`` ("test", "train", "all") selects digits rows; an HF dataset's split by its name (or
    ``#split=NAME`` in the reference); the other sources have one split. References:
    ``hfds:PATH_OR_ID[#input=COL,label=COL,split=NAME]`` (HF datasets, see :mod:`analysis.data.hfds`),
    ``images:/path/to/folder`` (one subfolder per class), ``upload:<id>``. Local paths and hub ids
    follow the same rules as models (``allow_local``, ``allow_hub``; see models.parse_ref).
    """
    if n is not None:
        n = int(n)
    seed = int(seed)
    if seed < 0:
        raise UserInputError(f"The seed must be 0 or more (got {seed}).")
    if isinstance(name, str) and name.startswith(("hfds:", "images:")):
        return _load_files(name, n, seed, split, allow_local, allow_hub)
    if split not in SPLITS:
        raise UserInputError(f"Unknown split {split!r}; use one of {', '.join(SPLITS)}.")
    if name == "digits":
        x, y = digits_split()[split]
        idx = _subsample(len(y), n, seed)
        return Dataset(name, "image", x[idx], y[idx], [str(i) for i in range(10)], idx, len(y), split, seed,
                       (8, 8), DESCRIPTIONS[name])
    if name == "text":
        texts, codes, label_names = _text_rows()
        idx = _subsample(len(texts), n, seed)
        return Dataset(name, "text", [texts[i] for i in idx], codes[idx], label_names, idx, len(texts), "all",
                       seed, None, DESCRIPTIONS[name])
    if name == "digits_noisy":
        x, y = _digits_noisy()
        idx = _subsample(len(y), n, seed)
        return Dataset(name, "image", x[idx], y[idx], [str(i) for i in range(10)], idx, len(y), "all", seed,
                       (8, 8), DESCRIPTIONS[name])
    if name in ("swiss_roll", "blobs"):
        x, y = _swiss_roll() if name == "swiss_roll" else _blobs()
        idx = _subsample(len(y), n, seed)
        return Dataset(name, "vector", x[idx], y[idx], [str(i) for i in range(int(y.max()) + 1)], idx, len(y),
                       "all", seed, None, DESCRIPTIONS[name])
    if isinstance(name, str) and name.startswith("upload:"):
        return _load_upload(name, n, seed)
    raise UserInputError(
        f"Unknown dataset {name!r}. Use one of {', '.join(BUILTIN)}, an uploaded set 'upload:<id>', an HF "
        "dataset 'hfds:PATH_OR_ID' or an image folder 'images:/path'."
    )


def check_ref(name: str, allow_local: bool = True, allow_hub: bool | None = None) -> None:
    """Validate a dataset reference without loading it (what a link may name); UserInputError if not."""
    from .. import settings
    from . import hfds

    hub = settings.hub_allowed(True) if allow_hub is None else allow_hub
    if name.startswith("hfds:"):
        hfds.check(name[5:], allow_local, hub)
    elif name.startswith("images:"):
        path = name[7:]
        if not path.startswith(hfds.LOCAL_PREFIXES):
            raise UserInputError(f"Write an image folder as a path: images:/abs/path or images:./relative ({path!r}).")
        if not allow_local:
            raise UserInputError(f"Local image folders are disabled on this server ({path!r}). Set "
                                 f"{settings.LOCAL_PATHS_ENV}=1 where the server runs to allow them, or upload a zip.")
    elif name not in BUILTIN and not name.startswith("upload:"):
        raise UserInputError(f"Unknown dataset {name!r}.")


def _load_files(name: str, n, seed: int, split: str, allow_local: bool, allow_hub) -> Dataset:
    """An HF dataset or an image folder: rows read lazily, hashed by their source's fingerprint."""
    from . import hfds, images

    check_ref(name, allow_local, allow_hub)
    if name.startswith("images:"):
        read, files, classes, labels, fp = images.folder_source(name[7:])
        return _lazy(name, "image", read, len(files), labels, classes, n, seed, "all", fp,
                     f"image folder {name[7:]} ({len(classes)} classes)")
    body, options = hfds.parse(name[5:])
    table, used = hfds.open_table(body, options.get("split") or split)
    kind, column, label = hfds.columns(table, options, body)
    codes, label_names = hfds.labels_of(table, label)
    return _lazy(name, kind, hfds.reader(table, column, kind), len(table), codes, label_names, n, seed, used,
                 hfds.fingerprint(table, body, column, label),
                 f"HF dataset {body} ({kind} column '{column}'" + (f", labels '{label}')" if label else ", no labels)"))


def _lazy(name, kind, read, total, labels, label_names, n, seed, split, fingerprint, description) -> Dataset:
    idx = _subsample(total, n, seed)
    return Dataset(name, kind, LazyRows(read, idx), None if labels is None else labels[idx], label_names, idx, total,
                   split, seed, None, description, fingerprint)


# --------------------------------------------------------------------------- uploads
def parse_upload(data: bytes, filename: str) -> tuple[str, object, np.ndarray | None, list[str] | None]:
    """Parse an uploaded data file into (kind, inputs, label codes, label names). Never unpickles.

    .npy: an (n x d) or (n x h x w) array. .npz: ``inputs`` (or ``X``/``x``) and optional ``labels``
    (or ``y``). .csv/.parquet: numeric feature columns, an optional ``label`` column and, for text,
    a ``text`` column. Bytes parsed before come back from the result store (parsed once).
    """
    from ..store import sha256_bytes

    tabular.check_size(data, filename)
    if tabular.suffix_of(filename) == ".zip":
        raise UserInputError(f"{filename}: an image zip is read from the store, not parsed; use data.upload.")
    what = f"data{tabular.suffix_of(filename)}"  # the same bytes read as another type parse differently
    return _unpack(*tabular.parsed_once(sha256_bytes(data), what, lambda: _pack(*_parse(data, filename))))


def _parse(data: bytes, filename: str) -> tuple[str, object, np.ndarray | None, list[str] | None]:
    with tabular.unreadable_as_user_error(filename, "a data file"):
        return _parse_checked(data, filename)


def _parse_checked(data: bytes, filename: str):
    suffix = tabular.suffix_of(filename)
    labels = None
    if suffix == ".npy":
        inputs = tabular.load_npy(data, filename)
    elif suffix == ".npz":
        arrays = tabular.load_npz(data, filename)
        in_key = next((k for k in ("inputs", "X", "x", "data") if k in arrays), None)
        if in_key is None:
            if len(arrays) != 1:
                raise UserInputError(
                    f"{filename} has arrays {sorted(arrays)}; name the inputs 'inputs' (or 'X') "
                    "and the labels 'labels' (or 'y')."
                )
            in_key = next(iter(arrays))
        inputs = arrays[in_key]
        lab_key = next((k for k in ("labels", "y", "label", "target") if k in arrays), None)
        labels = arrays[lab_key] if lab_key else None
    elif suffix in (".csv", ".parquet", ".jsonl"):
        df = _load_jsonl(data, filename) if suffix == ".jsonl" else tabular.load_frame(data, filename)
        label_col = next((c for c in df.columns if str(c).lower() in ("label", "labels", "y", "target")), None)
        labels = df[label_col].to_numpy() if label_col is not None else None
        rest = df.drop(columns=[label_col]) if label_col is not None else df
        text_col = next((c for c in rest.columns if str(c).lower() == "text"), None)
        if text_col is not None:
            texts = rest[text_col]
            if texts.isna().any():
                raise UserInputError(f"{filename}: column 'text' has {int(texts.isna().sum())} empty row(s).")
            inputs = texts.astype(str).tolist()
        else:
            non_num = [str(c) for c in rest.columns if rest[c].dtype.kind not in "biuf"]
            if non_num:
                raise UserInputError(
                    f"{filename}: column(s) {', '.join(non_num[:5])} are not numeric. Keep numeric features, "
                    "one optional 'label' column, or a 'text' column for sentences."
                )
            inputs = rest.to_numpy()
    else:
        raise UserInputError(
            f"{filename}: unsupported file type {suffix or '(none)'}; upload .npy, .npz, .csv, .parquet, .jsonl "
            "(a 'text' column) or a .zip of images (one folder per class)."
        )

    if isinstance(inputs, list):
        kind = "text"
        if len(inputs) < 2:
            raise UserInputError(f"{filename} has {len(inputs)} row(s); at least 2 are needed.")
        n_rows = len(inputs)
    else:
        arr = np.asarray(inputs)
        kind = "image" if arr.ndim == 3 else "vector"
        inputs = tabular.numeric_matrix(arr, f"{filename} (inputs)")
        n_rows = inputs.shape[0]
        if kind == "image":
            inputs = (inputs, arr.shape[1:])
    codes, names_ = None, None
    if labels is not None:
        labels = np.asarray(labels)
        if labels.ndim != 1 or len(labels) != n_rows:
            raise UserInputError(
                f"{filename}: labels have shape {labels.shape} but there are {n_rows} input rows; "
                "give one label per row."
            )
        if labels.dtype.kind == "f" and not np.isfinite(labels).all():
            raise UserInputError(f"{filename}: labels contain NaN; give every row a label or drop the labels.")
        uniq, codes = np.unique(labels.astype(str) if labels.dtype.kind not in "biu" else labels,
                                return_inverse=True)
        names_ = [str(u) for u in uniq]
        codes = codes.astype(np.int64)
    return kind, inputs, codes, names_


def _pack(kind: str, inputs, codes, names) -> tuple[dict, dict]:
    """parse_upload's result as plain arrays + JSON meta, for the result store."""
    meta = {"kind": kind, "label_names": names, "image_shape": None}
    if kind == "text":
        packed = tabular.pack_strings(inputs)
        arrays = {"text_utf8": packed["utf8"], "text_offsets": packed["offsets"]}
    else:
        if kind == "image":
            inputs, shape = inputs
            meta["image_shape"] = [int(v) for v in shape]
        arrays = {"inputs": inputs}
    if codes is not None:
        arrays["codes"] = codes
    return arrays, meta


def _unpack(arrays: dict, meta: dict) -> tuple[str, object, np.ndarray | None, list[str] | None]:
    kind = meta["kind"]
    if kind == "text":
        inputs = tabular.unpack_strings(arrays["text_utf8"], arrays["text_offsets"])
    elif kind == "image":
        inputs = (arrays["inputs"], tuple(meta["image_shape"]))
    else:
        inputs = arrays["inputs"]
    return kind, inputs, arrays.get("codes"), meta.get("label_names")


def _load_jsonl(data: bytes, filename: str):
    """JSON lines (one object per line) as a DataFrame; the lines are counted before parsing."""
    import io

    import pandas as pd

    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UserInputError(f"{filename} is not UTF-8 text (byte {exc.start} is invalid).") from exc
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if len(lines) < 2:
        raise UserInputError(f"{filename} has {len(lines)} line(s); at least 2 are needed.")
    df = pd.read_json(io.StringIO("\n".join(lines)), lines=True, dtype=False)
    df.columns = [str(c) for c in df.columns]
    return df


def upload(data: bytes, filename: str, store=None) -> str:
    """Validate and store an uploaded data file; returns its reference ``upload:<sha16>``."""
    from ..store import default_store
    from .images import is_image_zip, zip_index

    if is_image_zip(filename):  # checked whole (sizes, count, every image decoded) before it is stored
        tabular.check_size(data, filename)
        with tabular.unreadable_as_user_error(filename, "an image zip"):
            index = zip_index(data, filename, check_images=True)
        store = store or default_store()
        sha = store.put_blob(data, filename, "data", {"rows": len(index["files"]), "kind": "image"})
        return f"upload:{sha[:16]}"
    kind, inputs, codes, names_ = parse_upload(data, filename)  # validates before anything is written
    store = store or default_store()
    rows = len(inputs) if kind == "text" else (inputs[0] if kind == "image" else inputs).shape[0]
    sha = store.put_blob(data, filename, "data", {"rows": rows, "kind": kind})
    return f"upload:{sha[:16]}"


def _load_upload(ref: str, n: int | None, seed: int) -> Dataset:
    """An uploaded data set, subsampled: parsed once per content (the result store keeps the
    arrays), so a new ``n`` or ``seed`` reads arrays instead of parsing the file again."""
    from ..store import default_store

    store, prefix = default_store(), ref.split(":", 1)[1]
    info = store.find_blob(prefix, kind="data")
    if info is None:
        store.read_blob(prefix, kind="data")  # raises the store's message (no such upload)
    from .images import is_image_zip, zip_source

    if is_image_zip(info["name"]):
        read, files, classes, labels, fp = zip_source(store, info)
        return _lazy(ref, "image", read, len(files), labels, classes, n, seed, "all", fp,
                     f"uploaded {info['name']} ({len(classes)} classes)")
    parse = lambda: _pack(*_parse(info["path"].read_bytes(), info["name"]))  # noqa: E731 - only on a miss
    what = f"data{tabular.suffix_of(info['name'])}"
    kind, inputs, codes, names_ = _unpack(*tabular.parsed_once(info["sha256"], what, parse))
    image_shape = None
    if kind == "image":
        inputs, image_shape = inputs
    total = len(inputs) if kind == "text" else inputs.shape[0]
    idx = _subsample(total, n, seed)
    rows = [inputs[i] for i in idx] if kind == "text" else inputs[idx]
    return Dataset(ref, kind, rows, None if codes is None else codes[idx], names_, idx, total, "all", seed,
                   tuple(image_shape) if image_shape else None, f"uploaded {info['name']}")
