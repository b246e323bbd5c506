"""Any transformers model from a folder: decoders, T5's encoder, vision models, CLIP's towers;
token pooling under left and right padding; dtype; device_map; options in references; wrap()."""
import numpy as np
import pytest
import torch

from analysis import activations, data, models
from analysis.errors import UserInputError
from tests.tiny_models import save_tiny

FAMILIES = {"gpt2": ("decoder", ["h.0", "h.1"]), "llama": ("decoder", ["layers.0", "layers.1"]),
            "qwen2": ("decoder", ["layers.0", "layers.1"]), "gpt_neox": ("decoder", ["layers.0", "layers.1"]),
            "bert": ("encoder", ["embeddings", "encoder.layer.0", "encoder.layer.1"]),
            "t5": ("encoder-decoder", ["block.0", "block.1"]),
            "dinov2": ("vision", ["embeddings", "encoder.layer.0", "encoder.layer.1"]),
            "convnext": ("vision", ["embeddings", "encoder.stages.0", "encoder.stages.1"]),
            "clip": ("dual", ["embeddings", "encoder.layers.0", "encoder.layers.1"])}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    made = {}

    def get(name, side=None):
        key = (name, side)
        if key not in made:
            made[key] = save_tiny(name, root / f"{name}-{side}", padding_side=side)
        return made[key]
    return get


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_each_family_loads_from_a_folder_and_extracts(tiny, name):
    family, layers = FAMILIES[name]
    m = models.load(f"hf:{tiny(name)}")
    assert m.family == family and m.layers == layers
    ds = data.load("digits" if m.input_kind == "image" else "text", n=6)
    acts = activations.extract(m, ds, batch_size=4)
    for layer in layers:
        assert acts[layer].shape[0] == 6 and acts[layer].dtype == np.float32
        assert np.isfinite(acts[layer]).all() and acts[layer].std() > 0
    # the first block's output is the model's own hidden_states[1] (its forward pass, no hooks)
    first_block = layers[1] if layers[0] == "embeddings" else layers[0]
    one = ds.subset(slice(0, 1))
    batch = next(m.batches(one, 1, "cpu"))
    with torch.no_grad():
        ref = m.module(**batch.inputs, output_hidden_states=True).hidden_states[1][0]
    ref = ref.mean(0) if ref.ndim == 2 else ref.mean((1, 2))
    np.testing.assert_allclose(acts[first_block][0], ref.numpy(), atol=1e-5)


def test_vision_models_say_how_they_adapt_the_images(tiny):
    m = models.load(f"hf:{tiny('dinov2')}")
    note = m.input_note(data.load("digits", n=4))
    assert "8×8 grey" in note and "RGB" in note and "32×32" in note
    with pytest.raises(UserInputError, match="reads images"):
        m.check_data(data.load("text", n=4))


def test_clip_towers(tiny):
    vision = models.load(f"hf:{tiny('clip')}")
    text = models.load(f"hf:{tiny('clip')}#tower=text")
    assert vision.input_kind == "image" and text.input_kind == "text"
    assert vision.sha256 != text.sha256
    x = activations.extract(text, data.load("text", n=5), pooling="last")
    assert x["encoder.layers.1"].shape == (5, 32)
    with pytest.raises(UserInputError, match="text tower"):
        vision.check_data(data.load("text", n=3))


def _alone_and_in_batch(m, layer, pooling):
    short = "Rain again."
    long = short + " " + " ".join(["The quarterly report listed unusual expenses."] * 4)
    ds = data.load("text", n=3)
    ds.inputs, ds._sha = [short, long, short], None
    batch = activations.extract(m, ds, [layer], pooling, batch_size=3, use_cache=False)[layer]
    alone = data.load("text", n=1)
    alone.inputs, alone._sha = [short], None
    single = activations.extract(m, alone, [layer], pooling, use_cache=False)[layer]
    return batch, single


@pytest.mark.parametrize("name,side", [("gpt2", "right"), ("gpt2", "left"), ("llama", "left"), ("llama", "right")])
def test_last_token_pooling_under_left_and_right_padding(tiny, name, side):
    m = models.load(f"hf:{tiny(name, side)}")
    assert m.tokenizer.padding_side == side and m.tokenizer.pad_token is not None
    layer = m.layers[-1]
    batch, single = _alone_and_in_batch(m, layer, "last")
    # padding (on either side) must not change the short text's last token
    np.testing.assert_allclose(batch[0], single[0], atol=1e-5)
    np.testing.assert_allclose(batch[2], single[0], atol=1e-5)
    assert not np.allclose(batch[1], single[0], atol=1e-3)
    mean_b, mean_s = _alone_and_in_batch(m, layer, "mean")
    np.testing.assert_allclose(mean_b[0], mean_s[0], atol=1e-5)


def test_last_valid_index_on_both_sides():
    from analysis.activations.pooling import last_valid_index

    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert last_valid_index(right).tolist() == [2, 4]
    assert last_valid_index(left).tolist() == [4, 4]


def test_every_token_as_a_row(tiny):
    m = models.load(f"hf:{tiny('gpt2')}")
    ds = data.load("text", n=4)
    acts = activations.extract(m, ds, ["h.1"], pooling="tokens", batch_size=3)
    counts = [len(m.tokenizer(t, truncation=True, max_length=m.max_tokens)["input_ids"]) for t in ds.inputs]
    assert acts["h.1"].shape == (sum(counts), 32)
    np.testing.assert_array_equal(acts.sample_of_row["h.1"], np.repeat(np.arange(4), counts))
    last = activations.extract(m, ds, ["h.1"], pooling="last", use_cache=False)["h.1"]
    ends = np.cumsum(counts) - 1  # a sample's last token row is its last-token pooling
    np.testing.assert_allclose(acts["h.1"][ends], last, atol=1e-5)
    with pytest.raises(UserInputError, match="one vector per sample"):
        activations.extract(models.load("zoo:mlp-s0"), data.load("digits", n=5), ["net.fc1"], pooling="tokens")


def test_dtype_and_device_map_options(tiny):
    folder = tiny("gpt2")
    bf16 = models.load(f"hf:{folder}#dtype=bfloat16")
    assert next(bf16.module.parameters()).dtype == torch.bfloat16
    f32 = models.load(f"hf:{folder}")
    assert bf16.sha256 != f32.sha256
    ds = data.load("text", n=4)
    a, b = (activations.extract(m, ds, ["h.1"], "last", use_cache=False)["h.1"] for m in (f32, bf16))
    assert a.dtype == b.dtype == np.float32
    np.testing.assert_allclose(a, b, atol=0.1 * np.abs(a).max())  # bf16 keeps ~3 significant digits
    pytest.importorskip("accelerate")
    mapped = models.load(f"hf:{folder}#device_map=auto")
    c = activations.extract(mapped, ds, ["h.1"], "last", use_cache=False)["h.1"]
    np.testing.assert_allclose(a, c, atol=1e-5)


def test_module_paths_as_layers_and_bad_options(tiny):
    folder = tiny("gpt2")
    m = models.load(f"hf:{folder}#layers=h.0.attn+h.1.mlp")
    assert m.layers == ["h.0", "h.1", "h.0.attn", "h.1.mlp"]
    acts = activations.extract(m, data.load("text", n=3), ["h.1.mlp"], "mean")
    assert acts["h.1.mlp"].shape == (3, 32)
    for bad, match in [("#layers=h.9", "no module"), ("#dtype=int8", "dtype"), ("#colour=red", "Unknown model option"),
                       ("#device_map=cuda", "device_map"), ("#layers=../../etc", "layers")]:
        with pytest.raises(UserInputError, match=match):
            models.load(f"hf:{folder}{bad}")


def test_revision_goes_to_the_hub_download(monkeypatch, tiny):
    import huggingface_hub

    seen = {}

    def fake(repo, revision=None, allow_patterns=None):
        seen.update(repo=repo, revision=revision)
        return str(tiny("gpt2"))
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    m = models.load("hf:EleutherAI/pythia-70m@step1000#dtype=float16", allow_hub=True)
    assert seen == {"repo": "EleutherAI/pythia-70m", "revision": "step1000"}
    assert m.ref == "hf:EleutherAI/pythia-70m@step1000#dtype=float16"


def test_zoo_model_reads_image_files_shrunk_to_its_size(tmp_path):
    from PIL import Image

    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(3):
            Image.new("RGB", (40, 30), (255 * i // 2, 0, 0)).save(tmp_path / c / f"{i}.png")
    ds = data.load(f"images:{tmp_path}")
    m = models.load("zoo:mlp-s0")
    assert "8×8" in m.input_note(ds)
    acts = activations.extract(m, ds, ["net.fc1"])
    assert acts["net.fc1"].shape == (6, 128)


def test_wrap_any_module_with_a_per_sample_transform():
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 5), torch.nn.ReLU(), torch.nn.Linear(5, 2))

    def to_tensor(img):
        return torch.from_numpy(np.asarray(img.resize((8, 8)), dtype=np.float32).transpose(2, 0, 1) / 255.0)
    m = models.wrap(net, preprocess=to_tensor, layers=["1", "3"])
    ds = data.load("digits", n=7)
    acts = activations.extract(m, ds)
    assert acts["1"].shape == (7, 5) and acts["3"].shape == (7, 2)
    x = torch.stack([to_tensor(im.convert("RGB")) for im in ds.images(0, 7)])
    with torch.no_grad():
        np.testing.assert_allclose(acts["3"], net(x).numpy(), atol=1e-6)
    assert m.sha256 == models.wrap(net, preprocess=to_tensor).sha256
    with pytest.raises(UserInputError, match="no module"):
        models.wrap(net, layers=["9"])
