"""timm:, open_clip: and torchvision: references.

None of the three imports with this machine's CPU torch 2.13 (torchvision's wheel for 2.13 fails
at import with "operator torchvision::nms does not exist", and timm and open_clip import
torchvision), and installing them from the registry would replace torch. So each path is tested
with a stand-in package of the same API (``create_model`` + ``resolve_data_config`` /
``create_transform``; ``create_model_and_transforms`` + ``get_tokenizer``; ``get_model`` +
``get_model_weights``) that returns a network of the same kind, saved and reloaded as
safetensors: a ViT-style stack of blocks, a CLIP-style two-tower model, a ResNet-18-shaped network.
"""
import sys
import types

import numpy as np
import pytest
import torch
from torch import nn

from analysis import activations, data, models
from analysis.errors import UserInputError


class BasicBlock(nn.Module):  # torchvision.models.resnet.BasicBlock's layout
    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout)
        self.downsample = None if stride == 1 and cin == cout else nn.Sequential(
            nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        idt = x if self.downsample is None else self.downsample(x)
        return self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))) + idt)


class ResNet(nn.Module):  # torchvision.models.ResNet's layout, resnet18's depths, 4x narrower
    def __init__(self, width=8, classes=10):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width)
        self.relu, self.maxpool = nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)
        w = [width, width * 2, width * 4, width * 8]
        self.layer1 = nn.Sequential(BasicBlock(w[0], w[0]), BasicBlock(w[0], w[0]))
        self.layer2 = nn.Sequential(BasicBlock(w[0], w[1], 2), BasicBlock(w[1], w[1]))
        self.layer3 = nn.Sequential(BasicBlock(w[1], w[2], 2), BasicBlock(w[2], w[2]))
        self.layer4 = nn.Sequential(BasicBlock(w[2], w[3], 2), BasicBlock(w[3], w[3]))
        self.avgpool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(w[3], classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.norm, self.mlp = nn.LayerNorm(d), nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, x):
        return x + self.mlp(self.norm(x))


class ViT(nn.Module):  # timm's VisionTransformer layout: patch_embed, blocks, norm, head
    def __init__(self, d=16, depth=3):
        super().__init__()
        self.patch_embed = nn.Conv2d(3, d, 4, 4)
        self.blocks = nn.Sequential(*[Block(d) for _ in range(depth)])
        self.norm, self.head = nn.LayerNorm(d), nn.Linear(d, 5)

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        return self.head(self.norm(self.blocks(x)).mean(1))


class TextEncoder(nn.Module):
    def __init__(self, d=16):
        super().__init__()
        self.token_embedding = nn.Embedding(100, d)
        self.transformer = nn.Module()
        self.transformer.resblocks = nn.ModuleList([Block(d) for _ in range(2)])

    def encode_text(self, tokens):
        x = self.token_embedding(tokens)
        for b in self.transformer.resblocks:
            x = b(x)
        return x.mean(1)


def saved(module, tmp_path, name):
    """The module written as safetensors and read back into a fresh one (a saved module of the same kind)."""
    from safetensors.torch import load_file, save_file

    path = tmp_path / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(path))
    torch.manual_seed(123)
    fresh = type(module)()
    fresh.load_state_dict(load_file(str(path)))
    return fresh.eval()


def to_tensor(size):
    def transform(img):
        a = np.asarray(img.convert("RGB").resize((size, size)), dtype=np.float32) / 255.0
        return torch.from_numpy((a - 0.5).transpose(2, 0, 1).copy())
    return transform


@pytest.fixture
def stand_ins(monkeypatch, tmp_path):
    torch.manual_seed(0)
    resnet, vit = saved(ResNet(), tmp_path, "resnet"), saved(ViT(), tmp_path, "vit")
    clip = types.SimpleNamespace(visual=saved(ViT(), tmp_path, "visual"), text=TextEncoder())

    tv = types.ModuleType("torchvision")
    tv.models = types.SimpleNamespace(
        get_model=lambda name, weights: resnet if (name, weights) == ("resnet18", "DEFAULT") else None,
        get_model_weights=lambda name: types.SimpleNamespace(
            DEFAULT=types.SimpleNamespace(transforms=lambda: to_tensor(32))))
    timm = types.ModuleType("timm")
    timm.create_model = lambda name, pretrained: vit if (name, pretrained) == ("vit_tiny", True) else None
    timm.data = types.SimpleNamespace(resolve_data_config=lambda cfg, model: {"input_size": (3, 16, 16)},
                                      create_transform=lambda input_size: to_tensor(input_size[1]))

    class TwoTower(nn.Module):  # open_clip.CLIP's layout: visual, token_embedding, transformer, encode_text
        def __init__(self):
            super().__init__()
            self.visual = clip.visual
            self.token_embedding, self.transformer = clip.text.token_embedding, clip.text.transformer

        def encode_text(self, tokens):
            return TextEncoder.encode_text(self, tokens)
    oc = types.ModuleType("open_clip")
    oc.create_model_and_transforms = lambda name, pretrained: (TwoTower().eval(), None, to_tensor(16))
    oc.get_tokenizer = lambda name: lambda texts: torch.tensor([[len(w) % 100 for w in t.split()[:6]] +
                                                               [0] * (6 - len(t.split()[:6])) for t in texts])
    for name, mod in (("torchvision", tv), ("timm", timm), ("open_clip", oc)):
        monkeypatch.setitem(sys.modules, name, mod)
    return {"resnet": resnet, "vit": vit, "clip": clip}


def test_torchvision_resnet_layers_are_its_residual_blocks(stand_ins):
    m = models.load("torchvision:resnet18")
    assert m.layers == [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]
    ds = data.load("digits", n=6)
    acts = activations.extract(m, ds, ["layer4.1", "layer2.0"])
    x = torch.stack([to_tensor(32)(im) for im in ds.images(0, 6)])
    net = stand_ins["resnet"]
    with torch.no_grad():
        ref = net.layer4(net.layer3(net.layer2(net.layer1(net.maxpool(net.relu(net.bn1(net.conv1(x))))))))
    np.testing.assert_allclose(acts["layer4.1"], ref.mean((2, 3)).numpy(), atol=1e-5)
    assert acts.rules["layer4.1"] == "spatial mean" and acts["layer2.0"].shape == (6, 16)
    assert "preprocessing transform" in m.input_note(ds)


def test_timm_model_with_its_transform_and_extra_module_paths(stand_ins):
    m = models.load("timm:vit_tiny#layers=blocks.1.mlp")
    assert m.layers == ["blocks.0", "blocks.1", "blocks.2", "blocks.1.mlp"]
    acts = activations.extract(m, data.load("digits", n=4), ["blocks.2"], pooling="mean")
    assert acts["blocks.2"].shape == (4, 16)
    assert models.load("timm:vit_tiny").sha256 == m.sha256  # extra layers do not change the numbers
    assert models.load("timm:vit_tiny#dtype=float16").sha256 != m.sha256


def test_open_clip_towers(stand_ins):
    vision = models.load("open_clip:ViT-B-32/laion2b")
    assert vision.input_kind == "image" and vision.layers == ["blocks.0", "blocks.1", "blocks.2"]
    text = models.load("open_clip:ViT-B-32/laion2b#tower=text")
    assert text.input_kind == "text"
    assert text.layers == ["model.transformer.resblocks.0", "model.transformer.resblocks.1"]
    acts = activations.extract(text, data.load("text", n=5), text.layers, pooling="mean")
    assert acts["model.transformer.resblocks.1"].shape == (5, 16)


@pytest.mark.parametrize("ref,match", [("timm:", "Not a timm model name"), ("open_clip:ViT-B-32", "NAME/PRETRAINED"),
                                       ("torchvision:../x", "Not a torchvision model name")])
def test_malformed_library_references(ref, match):
    with pytest.raises(UserInputError, match=match):
        models.parse_ref(ref)


def test_downloads_off_refuses_library_models_at_once(stand_ins):
    with pytest.raises(UserInputError, match="downloads are off"):
        models.load("torchvision:resnet18", allow_hub=False)


def test_a_library_that_does_not_import_is_one_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # import fails, as torchvision's does here
    with pytest.raises(UserInputError, match="requirements-models.txt"):
        models.load("torchvision:resnet18")
