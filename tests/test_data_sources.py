"""HF datasets (save_to_disk folders, splits, Arrow/Parquet/JSON lines files), image folders,
image zip uploads (and the hostile ones), jsonl uploads; rows read lazily; each model's own
preprocessing."""
import io
import json
import struct
import zipfile
import zlib

import numpy as np
import pytest
from PIL import Image

from analysis import activations, data, models
from analysis.errors import UserInputError
from analysis.store import default_store

datasets = pytest.importorskip("datasets")


def _png(w=12, h=10, colour=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), colour).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
def text_dir(tmp_path):
    feats = datasets.Features({"sentence": datasets.Value("string"), "idx": datasets.Value("int32"),
                               "topic": datasets.ClassLabel(names=["art", "sport", "tech"])})
    rows = {"sentence": [f"sentence number {i} about {['art', 'sport', 'tech'][i % 3]}" for i in range(60)],
            "idx": list(range(60)), "topic": [i % 3 for i in range(60)]}
    d = datasets.Dataset.from_dict(rows, features=feats)
    datasets.DatasetDict({"train": d.select(range(40)), "test": d.select(range(40, 60))}).save_to_disk(
        str(tmp_path / "topics"))
    return tmp_path / "topics"


def test_save_to_disk_folder_with_splits_and_detected_columns(text_dir):
    ds = data.load(f"hfds:{text_dir}", n=8, seed=2)
    assert ds.kind == "text" and ds.split == "test" and ds.source_rows == 20 and len(ds) == 8
    assert ds.label_names == ["art", "sport", "tech"]
    texts = ds.batch(0, 8)
    assert all(t.startswith("sentence number") for t in texts)
    # the label of each row is its own topic (read from the same rows as the text)
    assert [["art", "sport", "tech"][c] for c in ds.labels] == [t.split()[-1] for t in texts]
    train = data.load(f"hfds:{text_dir}", split="train")
    assert train.split == "train" and len(train) == 40
    assert data.load(f"hfds:{text_dir}#split=train").source_rows == 40
    with pytest.raises(UserInputError, match="no split 'dev'"):
        data.load(f"hfds:{text_dir}", split="dev")


def test_columns_chosen_in_the_reference(text_dir):
    ds = data.load(f"hfds:{text_dir}#input=sentence,label=idx,split=train", n=5)
    assert len(ds.label_names) == 40  # idx as labels: one class per distinct value
    with pytest.raises(UserInputError, match="no column 'body'"):
        data.load(f"hfds:{text_dir}#input=body")
    with pytest.raises(UserInputError, match="Not a dataset option"):
        data.load(f"hfds:{text_dir}#colour=red")


def test_the_same_rows_hash_alike_and_other_rows_do_not(text_dir):
    a, b = data.load(f"hfds:{text_dir}", n=8, seed=2), data.load(f"hfds:{text_dir}", n=8, seed=2)
    assert a.sha256 == b.sha256
    assert data.load(f"hfds:{text_dir}", n=8, seed=3).sha256 != a.sha256
    assert data.load(f"hfds:{text_dir}#split=train", n=8, seed=2).sha256 != a.sha256
    assert a.subset(slice(0, 4)).sha256 != a.sha256 and a.subset(slice(0, 4)).batch(0, 4) == a.batch(0, 4)


def test_arrow_parquet_and_jsonl_files(tmp_path):
    d = datasets.Dataset.from_dict({"text": ["a b", "c d e", "f", "g h"], "label": ["x", "y", "x", "y"]})
    d.to_parquet(str(tmp_path / "t.parquet"))
    d.to_json(str(tmp_path / "t.jsonl"))
    for suffix in ("parquet", "jsonl"):
        ds = data.load(f"hfds:{tmp_path}/t.{suffix}")
        assert ds.batch(0, 4) == ["a b", "c d e", "f", "g h"] and list(ds.labels) == [0, 1, 0, 1]


def test_an_hf_image_dataset_through_a_vision_model(tmp_path):
    from tests.tiny_models import save_tiny

    imgs = [Image.new("RGB", (20 + i, 16), (10 * i, 100, 50)) for i in range(6)]
    d = datasets.Dataset.from_dict({"img": imgs, "label": [0, 1, 0, 1, 0, 1]},
                                   features=datasets.Features({"img": datasets.Image(),
                                                               "label": datasets.ClassLabel(names=["a", "b"])}))
    d.save_to_disk(str(tmp_path / "imgs"))
    ds = data.load(f"hfds:{tmp_path}/imgs")
    assert ds.kind == "image" and ds.lazy and ds.images(0, 1)[0].size == (20, 16)
    m = models.load(f"hf:{save_tiny('vit', tmp_path / 'vit')}")
    acts = activations.extract(m, ds, m.layers[-1:], batch_size=4)
    assert acts[m.layers[-1]].shape == (6, 32)
    assert "resized to 32×32" in m.input_note(ds)


def test_local_paths_and_hub_ids_follow_the_server_settings(text_dir):
    with pytest.raises(UserInputError, match="Local dataset paths are disabled"):
        data.load(f"hfds:{text_dir}", allow_local=False)
    with pytest.raises(UserInputError, match="hub is off|hub .* is off"):
        data.load("hfds:org/some-set", allow_hub=False)
    with pytest.raises(UserInputError, match="Local image folders are disabled"):
        data.load("images:/tmp", allow_local=False)
    with pytest.raises(UserInputError, match="as a path"):
        data.load("images:relative/folder")


@pytest.fixture
def image_dir(tmp_path):
    for c, colour in (("cat", (250, 0, 0)), ("dog", (0, 0, 250))):
        (tmp_path / "pets" / c).mkdir(parents=True)
        for i in range(4):
            (tmp_path / "pets" / c / f"{i}.png").write_bytes(_png(12 + i, 10, colour))
    return tmp_path / "pets"


def test_image_folder_one_subfolder_per_class(image_dir):
    ds = data.load(f"images:{image_dir}")
    assert ds.kind == "image" and ds.label_names == ["cat", "dog"] and list(ds.labels) == [0] * 4 + [1] * 4
    assert ds.images(5, 6)[0].getpixel((0, 0)) == (0, 0, 250)
    shown = ds.render(0)
    assert shown["image"].ndim == 2 and shown["rgb"].shape[2] == 3 and shown["rgb"][0, 0, 0] > 0.9
    (image_dir / "stray.png").write_bytes(_png())
    with pytest.raises(UserInputError, match="not in a class folder"):
        data.load(f"images:{image_dir}")


def _zip(files: dict, compression=zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as z:
        for name, body in files.items():
            z.writestr(name, body)
    return buf.getvalue()


def test_image_zip_upload_round_trip():
    body = _zip({f"pets/{c}/{i}.png": _png(8 + i, 8, col) for c, col in (("cat", (255, 0, 0)), ("dog", (0, 255, 0)))
                 for i in range(3)})
    ref = data.upload(body, "pets.zip")
    ds = data.load(ref, n=4, seed=1)
    assert ds.kind == "image" and ds.label_names == ["cat", "dog"] and ds.fingerprint.startswith(ref[7:])
    assert ds.images(0, 4)[0].mode == "RGB"
    acts = activations.extract(models.load("zoo:mlp-s0"), ds, ["net.fc1"])
    assert acts["net.fc1"].shape == (4, 128)


def _bomb_png(w=60_000, h=60_000) -> bytes:
    """A valid PNG signature and IHDR declaring w x h pixels, followed by a tiny image's data."""
    small = _png(2, 2)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return small[:8] + chunk + small[33:]


@pytest.mark.parametrize("name,files,match,limit_mb", [
    ("bomb.zip", {"a/0.png": _bomb_png(), "b/0.png": _png()}, "decompression bomb", None),
    ("bomb8k.zip", {"a/0.png": _bomb_png(8000, 8000), "b/0.png": _png()}, "declares 8000 x 8000 pixels", None),
    ("zipbomb.zip", {"a/0.png": b"\0" * (5 << 20), "b/0.png": _png()}, "unpacks to", 1),
    ("flat.zip", {"0.png": _png(), "1.png": _png()}, "not in a class folder", None),
    ("broken.zip", {"a/0.png": b"\x89PNG not an image", "b/0.png": _png()}, "not a readable image", None),
    ("empty.zip", {"notes.txt": b"hello"}, "holds no images", None),
])
def test_hostile_image_zips_are_refused_and_nothing_is_stored(name, files, match, limit_mb, monkeypatch):
    if limit_mb:
        monkeypatch.setenv("REPLENS_MAX_UPLOAD_MB", str(limit_mb))
    decoded = []
    real_load = Image.Image.load
    monkeypatch.setattr(Image.Image, "load", lambda self: decoded.append(self.size) or real_load(self))
    with pytest.raises(UserInputError, match=match):
        data.upload(_zip(files), name)
    assert default_store().blobs("data") == []
    assert all(w * h <= 4096 for w, h in decoded)  # the bomb's pixels were never decoded


def test_too_many_files_refused_from_the_directory(monkeypatch):
    from analysis.data import images

    monkeypatch.setattr(images, "MAX_IMAGES", 3)
    with pytest.raises(UserInputError, match="at most 3 images"):
        data.upload(_zip({f"a/{i}.png": b"x" for i in range(4)}), "many.zip")


def test_jsonl_text_upload():
    lines = "\n".join(json.dumps({"text": f"line {i}", "label": "ab"[i % 2]}) for i in range(6))
    ds = data.load(data.upload(lines.encode(), "t.jsonl"))
    assert ds.kind == "text" and ds.inputs[0] == "line 0" and ds.label_names == ["a", "b"]
