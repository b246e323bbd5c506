"""Model sources: zoo, transformers (bundled MiniLM, random twin, local folder), uploads
(TorchScript, safetensors of a zoo architecture, embeddings) and refusals (pickles, junk, forged refs)."""
import io
import json

import numpy as np
import pytest
import torch

from analysis import activations, data, models
from analysis.errors import UserInputError
from conftest import PickleExploit


def test_zoo_model_layers_in_forward_order():
    m = models.load("zoo:mlp-s0")
    assert m.layers == ["net.fc1", "net.relu1", "net.fc2", "net.relu2", "net.fc3", "net.relu3", "net.logits"]
    assert m.num_parameters() == 64 * 128 + 128 + 2 * (128 * 128 + 128) + 128 * 10 + 10
    assert m.kind == "classifier" and m.ref == "zoo:mlp-s0"
    ae = models.load("zoo:conv-ae-b8")
    assert ae.layers.index("encoder.bottleneck") < ae.layers.index("decoder.fc")
    assert ae.kind == "autoencoder"


def test_layer_table_shapes_and_params():
    table = models.layer_table(models.load("zoo:cnn-s0"), data.load("digits", n=4))
    row = table.set_index("layer").loc["net.conv1"]
    assert row["output shape"] == "16 × 8 × 8" and row["parameters"] == 16 * 9 + 16
    assert table["parameters"].sum() == models.load("zoo:cnn-s0").num_parameters()


def test_minilm_is_the_real_pretrained_encoder():
    m = models.load("hf:minilm")
    assert m.layers[0] == "embeddings" and len(m.layers) == 7
    ds = data.load("text", n=60, seed=0)
    acts = activations.extract(m, ds, layers=["encoder.layer.5"])
    x = acts["encoder.layer.5"]
    assert x.shape == (60, 384)
    # sentence-transformers' pipeline for all-MiniLM-L6-v2 is the masked mean of the last layer,
    # then L2 normalisation: the directions must agree
    from sentence_transformers import SentenceTransformer
    from analysis.models.hf import minilm_path

    st_model = SentenceTransformer(str(minilm_path()), device="cpu")
    ref = st_model.encode(list(ds.inputs), normalize_embeddings=False, convert_to_numpy=True)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    ref = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    np.testing.assert_allclose(unit, ref, atol=1e-4)


def test_minilm_random_differs_but_has_same_shape():
    a, b = models.load("hf:minilm"), models.load("hf:minilm-random")
    assert a.layers == b.layers and a.sha256 != b.sha256
    assert a.num_parameters() == b.num_parameters()
    wa = dict(a.module.named_parameters())["encoder.layer.0.attention.self.query.weight"]
    wb = dict(b.module.named_parameters())["encoder.layer.0.attention.self.query.weight"]
    assert not torch.equal(wa, wb)


def test_local_transformers_folder(tiny_bert_dir):
    m = models.load(f"hf:{tiny_bert_dir}")
    assert m.layers == ["embeddings", "encoder.layer.0", "encoder.layer.1"]
    acts = activations.extract(m, data.load("text", n=8))
    assert {k: v.shape for k, v in acts.items()} == {l: (8, 32) for l in m.layers}
    with pytest.raises(UserInputError, match="disabled"):
        models.load(f"hf:{tiny_bert_dir}", allow_local=False)


@pytest.mark.parametrize("ref,match", [
    ("zoo:../../etc/passwd", "Not a zoo model"),
    ("zoo:nope", "No zoo model"),
    ("upload:../x", "Not an upload id"),
    ("upload:0123456789abcdef", "No uploaded file"),
    ("s3:bucket", "Unknown model source"),
    ("mlp", "Not a model reference"),
    ("hf:/no/such/folder", "No transformers model folder"),
])
def test_bad_references(ref, match):
    with pytest.raises(UserInputError, match=match):
        models.load(ref)


def test_model_data_mismatch_messages():
    with pytest.raises(UserInputError, match="reads numeric inputs"):
        models.load("zoo:mlp-s0").check_data(data.load("text", n=5))
    with pytest.raises(UserInputError, match="expects 64 input features"):
        models.load("zoo:mlp-s0").check_data(data.load("blobs", n=5))
    with pytest.raises(UserInputError, match="reads text"):
        models.load("hf:minilm").check_data(data.load("digits", n=5))


# ------------------------------------------------------------------ uploads
def _torchscript_bytes(module, example):
    buf = io.BytesIO()
    torch.jit.save(torch.jit.trace(module, example), buf)
    return buf.getvalue()


def test_torchscript_upload_runs_and_matches():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 20), torch.nn.ReLU(), torch.nn.Linear(20, 10)).eval()
    ref = models.upload(_torchscript_bytes(net, torch.zeros(1, 64)), "net.pt")
    m = models.load(ref)
    assert m.layers == ["output"] and m.kind == "classifier"
    ds = data.load("digits", n=30)
    out = activations.extract(m, ds)["output"]
    with torch.no_grad():
        np.testing.assert_allclose(out, net(torch.from_numpy(ds.inputs)).numpy(), atol=1e-6)


def test_safetensors_upload_of_zoo_architecture_matches_zoo():
    from safetensors.torch import save

    zm = models.load("zoo:mlp-s1")
    raw = save({k: v.contiguous() for k, v in zm.module.state_dict().items()})  # no metadata: recognised by shape
    m = models.load(models.upload(raw, "weights.safetensors"))
    ds = data.load("digits", n=25)
    a = activations.extract(zm, ds, layers=["net.fc2"])["net.fc2"]
    b = activations.extract(m, ds, layers=["net.fc2"])["net.fc2"]
    np.testing.assert_array_equal(a, b)
    assert m.sha256 != zm.sha256  # a different file, even if the same weights


def test_safetensors_of_unknown_architecture_is_refused():
    from safetensors.torch import save

    with pytest.raises(UserInputError, match="match none of the zoo architectures"):
        models.upload(save({"w": torch.ones(3, 3)}), "odd.safetensors")


def test_lying_safetensors_header_is_refused():
    header = json.dumps({"w": {"dtype": "F32", "shape": [1000, 1000], "data_offsets": [0, 4000000]}}).encode()
    payload = len(header).to_bytes(8, "little") + header + b"\x00" * 16
    with pytest.raises(UserInputError, match="not a valid safetensors"):
        models.upload(payload, "liar.safetensors")


def test_embeddings_upload_aligned_with_full_split_and_subsample():
    full = data.load("digits")
    emb = np.random.default_rng(0).normal(size=(full.source_rows, 6)).astype(np.float32)
    buf = io.BytesIO()
    np.savez(buf, layer1=emb, layer2=emb[:, :3] * 2)
    m = models.load(models.upload(buf.getvalue(), "emb.npz"))
    assert m.layers == ["layer1", "layer2"] and m.kind == "embeddings"
    ds = data.load("digits", n=50, seed=7)
    acts = activations.extract(m, ds)
    np.testing.assert_array_equal(acts["layer1"], emb[ds.indices])
    with pytest.raises(UserInputError, match="rows"):
        activations.extract(m, data.load("text", n=50))


def test_embeddings_with_ragged_layers_refused():
    buf = io.BytesIO()
    np.savez(buf, a=np.ones((10, 2)), b=np.ones((9, 2)))
    with pytest.raises(UserInputError, match="different row counts"):
        models.upload(buf.getvalue(), "ragged.npz")


@pytest.mark.parametrize("name", ["model.pt", "model.pth"])
def test_malicious_pickle_is_refused_without_executing(tmp_path, name, isolated_store):
    marker = tmp_path / "pwned"
    buf = io.BytesIO()
    torch.save({"x": PickleExploit(marker)}, buf)  # a torch.save pickle whose loading would create a file
    with pytest.raises(UserInputError, match="not a TorchScript file"):
        models.upload(buf.getvalue(), name)
    assert not marker.exists()
    assert not (isolated_store / "blobs").exists() or not any((isolated_store / "blobs").rglob("*"))


def test_pickled_npy_embeddings_refused(tmp_path):
    marker = tmp_path / "pwned"
    buf = io.BytesIO()
    np.save(buf, np.array([PickleExploit(marker)], dtype=object), allow_pickle=True)
    with pytest.raises(UserInputError, match="never unpickles"):
        models.upload(buf.getvalue(), "emb.npy")
    assert not marker.exists()


def test_wrong_model_file_type():
    with pytest.raises(UserInputError, match="unsupported model file type"):
        models.upload(b"hello", "model.onnx")


@pytest.mark.parametrize("suffix", [".npy", ".csv", ".parquet"])
def test_single_layer_embeddings_formats(suffix):
    import pandas as pd

    ds = data.load("text")
    emb = np.random.default_rng(1).normal(size=(len(ds), 5)).astype(np.float32)
    buf = io.BytesIO()
    if suffix == ".npy":
        np.save(buf, emb)
    elif suffix == ".csv":
        buf.write(pd.DataFrame(emb, columns=[f"d{i}" for i in range(5)]).to_csv(index=False).encode())
    else:
        pd.DataFrame(emb, columns=[f"d{i}" for i in range(5)]).to_parquet(buf)
    m = models.load(models.upload(buf.getvalue(), f"sentences{suffix}"))
    assert m.layers == ["sentences"]
    sub = data.load("text", n=40, seed=2)
    np.testing.assert_allclose(activations.extract(m, sub)["sentences"], emb[sub.indices], rtol=1e-6)
