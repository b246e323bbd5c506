"""Small uploads that would cost a lot are refused from their headers, before anything big is
allocated; accepted uploads are parsed once, whatever n and seed are asked later; only
UserInputError reaches a library caller from the upload and load paths."""
from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pandas as pd
import pytest
import torch

from analysis import data, models, tabular, zoo
from analysis.errors import UserInputError


def wide_csv(columns: int = 1_000_000) -> bytes:
    """About 13 MB: a header of 10^6 names and three rows of zeros (such a file took 228 s and
    1.9 GB in pandas)."""
    row = ",".join("0" * columns) + "\n"
    return (",".join(f"c{i}" for i in range(columns)) + "\n" + row * 3).encode()


@pytest.fixture
def no_pandas_csv(monkeypatch):
    """pandas' CSV reader must not be reached: the header already says no."""
    def refuse(*a, **k):
        raise AssertionError("pd.read_csv was called on a CSV that its header refuses")

    monkeypatch.setattr(pd, "read_csv", refuse)


@pytest.mark.parametrize("upload", [data.upload, models.upload])
def test_a_csv_with_a_million_columns_is_refused_from_its_header(upload, no_pandas_csv, monkeypatch):
    monkeypatch.setenv("REPLENS_MAX_UPLOAD_MB", "50")
    blob = wide_csv()
    assert len(blob) > 12 * 2**20
    with pytest.raises(UserInputError, match=r"has more than [\d,]{7} columns \(its header line alone is over "
                                             r"1 MB\); tables are read up to 16,384 columns"):
        upload(blob, "wide.csv")
    narrow = (",".join(f"c{i}" for i in range(20_000)) + "\n" + ",".join("0" * 20_000) + "\n").encode()
    with pytest.raises(UserInputError, match=r"has 20,000 columns; tables are read up to 16,384"):
        upload(narrow, "wide.csv")


def test_a_csv_whose_cells_would_not_fit_is_refused_from_its_line_count(no_pandas_csv, monkeypatch):
    monkeypatch.setenv("REPLENS_MAX_UPLOAD_MB", "1")  # 4 MB unpacked: 524,288 numbers
    blob = (",".join(f"c{i}" for i in range(1000)) + "\n" + ("," * 999 + "\n") * 600).encode()  # empty cells
    assert len(blob) < 2**20
    with pytest.raises(UserInputError, match=r"about 600 rows x 1,000 columns \(5 MB as numbers\)"):
        data.upload(blob, "sparse.csv")


def test_a_parquet_file_with_too_many_columns_is_refused_from_its_footer():
    frame = pd.DataFrame(np.zeros((2, tabular.MAX_TABLE_COLUMNS + 1), np.float32))
    frame.columns = [f"c{i}" for i in frame.columns]
    buf = io.BytesIO()
    frame.to_parquet(buf)
    with pytest.raises(UserInputError, match="16,385 columns"):
        data.upload(buf.getvalue(), "wide.parquet")


def test_an_npz_bomb_is_refused_from_its_declared_sizes(monkeypatch):
    monkeypatch.setenv("REPLENS_MAX_UPLOAD_MB", "1")
    buf = io.BytesIO()
    np.savez_compressed(buf, inputs=np.zeros((10_000, 1000), np.float32))  # 40 MB of zeros
    assert len(buf.getvalue()) < 100_000
    calls = []
    monkeypatch.setattr(np.lib.npyio.NpzFile, "__getitem__", lambda *a: calls.append(a))
    for upload in (data.upload, models.upload):
        with pytest.raises(UserInputError, match=r"would inflate to 38 MB, over this server's limit of 4 MB"):
            upload(buf.getvalue(), "bomb.npz")
    assert calls == []  # no member was inflated


def _count(monkeypatch, module, name) -> list:
    calls, original = [], getattr(module, name)

    def counted(*a, **k):
        calls.append(a[1] if len(a) > 1 else None)
        return original(*a, **k)

    monkeypatch.setattr(module, name, counted)
    return calls


def test_an_uploaded_data_set_is_parsed_once_for_every_n_and_seed(monkeypatch):
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    np.savez_compressed(buf, inputs=rng.normal(size=(400, 16)), labels=rng.integers(0, 3, 400))
    parses = _count(monkeypatch, tabular, "load_npz")
    ref = data.upload(buf.getvalue(), "set.npz")
    views = [data.load(ref, n=n, seed=seed) for n, seed in ((100, 0), (100, 1), (250, 7), (None, 0))]
    assert parses == ["set.npz"]
    x, y = np.load(io.BytesIO(buf.getvalue()))["inputs"], np.load(io.BytesIO(buf.getvalue()))["labels"]
    for ds in views:  # the stored arrays are the file's arrays
        np.testing.assert_array_equal(ds.inputs, x[ds.indices].astype(np.float32))
        np.testing.assert_array_equal(np.asarray(ds.label_names, dtype=int)[ds.labels], y[ds.indices])
    assert len(views[1]) == 100 and not np.array_equal(views[0].indices, views[1].indices)


def test_an_uploaded_text_set_is_parsed_once_and_reads_back_exactly(monkeypatch):
    texts = ["plain", "ünïcödé ✓ \u2028 line", "x", "comma, \"quoted\"", "emoji 🧪"] * 8
    frame = pd.DataFrame({"text": texts, "label": ["a", "b"] * 20})
    parses = _count(monkeypatch, tabular, "load_frame")
    ref = data.upload(frame.to_csv(index=False).encode(), "t.csv")
    for seed in range(3):
        ds = data.load(ref, n=10, seed=seed)
        assert ds.inputs == [texts[i] for i in ds.indices]
    assert parses == ["t.csv"]


def test_an_embeddings_upload_is_parsed_once_however_often_it_is_loaded(monkeypatch):
    from analysis.models import embeddings

    buf = io.BytesIO()
    layers = {"</script> odd name": np.random.rand(30, 4), "b": np.random.rand(30, 2)}
    np.savez(buf, **layers)
    parses = _count(monkeypatch, embeddings, "_parse")
    ref = models.upload(buf.getvalue(), "emb.npz")
    for _ in range(3):
        m = models.load(ref)
    assert len(parses) == 1
    assert m.layers == list(layers)
    np.testing.assert_array_equal(m.arrays["b"], layers["b"].astype(np.float32))


# ------------------------------------------------------------------ safetensors metadata
def _zoo_weights(metadata: dict) -> bytes:
    from safetensors.torch import save

    module = zoo.build_model("mlp", {"width": 128})
    return save({k: v.contiguous() for k, v in module.state_dict().items()},
                metadata={k: json.dumps(v) for k, v in metadata.items()})


@pytest.fixture
def builds(monkeypatch):
    """Every zoo.build_model call: (params, device the module's parameters were made on)."""
    calls, original = [], zoo.build_model

    def recorded(arch, params=None):
        module = original(arch, params)
        calls.append((dict(params or {}), next(module.parameters()).device.type))
        return module

    monkeypatch.setattr(zoo, "build_model", recorded)
    return calls


@pytest.mark.parametrize("width", [16_000, 50_000, 100])
def test_a_lying_safetensors_width_builds_nothing_at_that_width(width, builds):
    blob = _zoo_weights({"architecture": "mlp", "params": {"width": width}})
    ref = models.upload(blob, "liar.safetensors")
    m = models.load(ref)
    assert m.info["params"] == {"width": 128}  # recognised from the tensors' shapes
    real = [p for p, device in builds if device != "meta"]
    assert real and all(p == {"width": 128} for p in real)  # built for real only at the file's size
    assert all(device == "meta" for p, device in builds if p.get("width") == width)


def test_safetensors_whose_shapes_match_no_architecture_are_refused_without_building(builds):
    from safetensors.torch import save

    blob = save({"net.fc1.weight": torch.zeros(16_000, 64)}, metadata={"architecture": '"mlp"',
                                                                       "params": '{"width": 16000}'})
    with pytest.raises(UserInputError, match="match none of the zoo architectures"):
        models.upload(blob, "wide.safetensors")
    assert all(device == "meta" for _, device in builds)


@pytest.mark.parametrize("metadata", [{"architecture": "[1, 2]"}, {"architecture": '"mlp"', "params": '"x"'},
                                      {"architecture": '"mlp"', "params": '{"width": -1}'},
                                      {"architecture": '"mlp"', "params": '{"width": true}'},
                                      {"architecture": '"nope"'}, {"params": "{"}])
def test_odd_safetensors_metadata_falls_back_to_the_tensors(metadata):
    from safetensors.torch import save

    module = zoo.build_model("mlp", {"width": 128})
    blob = save({k: v.contiguous() for k, v in module.state_dict().items()}, metadata=metadata)
    assert models.load(models.upload(blob, "odd.safetensors")).info["params"] == {"width": 128}


def test_safetensors_offsets_are_checked_against_shapes_and_the_file():
    header = {"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 8]}}  # 16 bytes declared as 8
    raw = json.dumps(header).encode()
    with pytest.raises(UserInputError, match="not a valid safetensors file"):
        models.upload(len(raw).to_bytes(8, "little") + raw + bytes(8), "short.safetensors")
    header = {"w": {"dtype": "X9", "shape": [1], "data_offsets": [0, 4]}}
    raw = json.dumps(header).encode()
    with pytest.raises(UserInputError, match="not a valid safetensors file"):
        models.upload(len(raw).to_bytes(8, "little") + raw + bytes(4), "dtype.safetensors")


# ------------------------------------------------------------------ only UserInputError reaches callers
def _deep_npy() -> bytes:
    """An .npy whose header nests lists 50,000 deep (numpy refuses its length before parsing it)."""
    header = "{'descr': " + "[" * 50_000 + "]" * 50_000 + ", 'fortran_order': False, 'shape': (2, 2), }"
    header = header.encode("latin1")
    header += b" " * (-(len(header) + 11) % 64) + b"\n"
    return b"\x93NUMPY\x02\x00" + len(header).to_bytes(4, "little") + header + bytes(16)


def _npz_with_bad_member() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("inputs.npy", _deep_npy())
    return buf.getvalue()


@pytest.mark.parametrize("name,blob", [("deep.npy", _deep_npy()), ("deep.npz", _npz_with_bad_member()),
                                       ("x.parquet", b"PAR1" + bytes(100) + b"PAR1"),
                                       ("x.csv", b"a,b\n1,2\n\"unterminated"),
                                       ("x.safetensors", b"\xff" * 8 + b"{}")])
@pytest.mark.parametrize("upload", [data.upload, models.upload])
def test_only_user_input_errors_reach_the_caller(name, blob, upload, caplog):
    try:
        upload(blob, name)
    except UserInputError as exc:
        assert type(exc) is UserInputError and "Traceback" not in str(exc) and "/" not in str(exc).replace(name, "")
    except BaseException as exc:  # noqa: BLE001
        pytest.fail(f"{type(exc).__name__} reached the caller: {exc!r:.200}")


@pytest.mark.parametrize("error", [RecursionError("deep"), RuntimeError("PytorchStreamReader failed"),
                                   ValueError("a library's own"), MemoryError(), KeyError("x")])
def test_the_upload_boundary_turns_any_failure_into_one_message(error, monkeypatch, caplog):
    """Whatever a parser raises deep inside, the caller gets a UserInputError naming the file;
    the original type and traceback go to the log."""
    def fail(*a, **k):
        raise error

    monkeypatch.setattr(tabular, "load_npz", fail)
    buf = io.BytesIO()
    np.savez(buf, inputs=np.zeros((4, 2)))
    for upload in (data.upload, models.upload):
        with pytest.raises(UserInputError, match=rf"set.npz could not be read as .* \({type(error).__name__}\); "
                                                 "nothing was stored") as info:
            upload(buf.getvalue(), "set.npz")
        assert type(info.value) is UserInputError and info.value.__cause__ is None
    assert any(r.exc_info and r.exc_info[0] is type(error) for r in caplog.records)
