"""The model zoo: small digits models trained deterministically, shipped as safetensors.

``python -m analysis.zoo build`` retrains every model in :data:`SPECS` from its seed on the fixed
digits split (see :func:`analysis.data.digits_split`) and writes ``assets/zoo/<name>.safetensors``
plus ``assets/zoo/manifest.json``. Every zoo model takes (n, 64) float inputs in [0, 1].
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from .zoo_manifest import MANIFEST, ZOO_DIR, checkpoints  # noqa: F401 - read without torch
DATA_NOTE = "sklearn digits, pixels/16, stratified split test_size=597 random_state=0"


# --------------------------------------------------------------------------- architectures
class MLPClassifier(nn.Module):
    """64 -> width -> width -> width -> 10 with ReLU."""

    def __init__(self, width: int = 128, depth: int = 3, n_classes: int = 10):
        super().__init__()
        layers: "OrderedDict[str, nn.Module]" = OrderedDict()
        d_in = 64
        for i in range(1, depth + 1):
            layers[f"fc{i}"] = nn.Linear(d_in, width)
            layers[f"relu{i}"] = nn.ReLU()
            d_in = width
        layers["logits"] = nn.Linear(d_in, n_classes)
        self.net = nn.Sequential(layers)

    def forward(self, x):
        return self.net(x)


class CNNClassifier(nn.Module):
    """Three 3x3 conv layers on the 8x8 image, global average pooling, linear read-out."""

    def __init__(self, channels: int = 16, n_classes: int = 10):
        super().__init__()
        c = channels
        self.net = nn.Sequential(OrderedDict([
            ("image", nn.Unflatten(1, (1, 8, 8))),
            ("conv1", nn.Conv2d(1, c, 3, padding=1)), ("relu1", nn.ReLU()),
            ("conv2", nn.Conv2d(c, 2 * c, 3, padding=1)), ("relu2", nn.ReLU()),
            ("pool", nn.MaxPool2d(2)),
            ("conv3", nn.Conv2d(2 * c, 4 * c, 3, padding=1)), ("relu3", nn.ReLU()),
            ("gap", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten()),
            ("logits", nn.Linear(4 * c, n_classes)),
        ]))

    def forward(self, x):
        return self.net(x)


class Autoencoder(nn.Module):
    """Base for autoencoders: ``encoder`` maps (n, 64) to the bottleneck, ``decoder`` maps back."""

    def encode(self, x):
        return self.encoder(x)

    def decode(self, z):
        return self.decoder(z)

    def forward(self, x):
        return self.decoder(self.encoder(x))


class MLPAutoencoder(Autoencoder):
    def __init__(self, bottleneck: int = 8, width: int = 128):
        super().__init__()
        self.encoder = nn.Sequential(OrderedDict([
            ("fc1", nn.Linear(64, width)), ("relu1", nn.ReLU()),
            ("fc2", nn.Linear(width, width // 2)), ("relu2", nn.ReLU()),
            ("bottleneck", nn.Linear(width // 2, bottleneck)),
        ]))
        self.decoder = nn.Sequential(OrderedDict([
            ("fc1", nn.Linear(bottleneck, width // 2)), ("relu1", nn.ReLU()),
            ("fc2", nn.Linear(width // 2, width)), ("relu2", nn.ReLU()),
            ("out", nn.Linear(width, 64)), ("sigmoid", nn.Sigmoid()),
        ]))


class ConvAutoencoder(Autoencoder):
    def __init__(self, bottleneck: int = 8, channels: int = 16):
        super().__init__()
        c = channels
        self.encoder = nn.Sequential(OrderedDict([
            ("image", nn.Unflatten(1, (1, 8, 8))),
            ("conv1", nn.Conv2d(1, c, 3, stride=2, padding=1)), ("relu1", nn.ReLU()),  # 4x4
            ("conv2", nn.Conv2d(c, 2 * c, 3, stride=2, padding=1)), ("relu2", nn.ReLU()),  # 2x2
            ("flatten", nn.Flatten()),
            ("bottleneck", nn.Linear(8 * c, bottleneck)),
        ]))
        self.decoder = nn.Sequential(OrderedDict([
            ("fc", nn.Linear(bottleneck, 8 * c)), ("relu0", nn.ReLU()),
            ("grid", nn.Unflatten(1, (2 * c, 2, 2))),
            ("deconv1", nn.ConvTranspose2d(2 * c, c, 4, stride=2, padding=1)), ("relu1", nn.ReLU()),  # 4x4
            ("deconv2", nn.ConvTranspose2d(c, 1, 4, stride=2, padding=1)),  # 8x8
            ("sigmoid", nn.Sigmoid()), ("flatten", nn.Flatten()),
        ]))


ARCHITECTURES: dict[str, type[nn.Module]] = {
    "mlp": MLPClassifier,
    "cnn": CNNClassifier,
    "mlp_ae": MLPAutoencoder,
    "conv_ae": ConvAutoencoder,
}
KIND = {"mlp": "classifier", "cnn": "classifier", "mlp_ae": "autoencoder", "conv_ae": "autoencoder"}
# Modules that only reshape: not offered as layers (their output equals their input).
RESHAPE_TYPES = (nn.Unflatten, nn.Flatten, nn.Identity, nn.Dropout)


def build_model(architecture: str, params: dict | None = None) -> nn.Module:
    if architecture not in ARCHITECTURES:
        raise KeyError(f"unknown zoo architecture {architecture!r}")
    return ARCHITECTURES[architecture](**(params or {}))


def describe_architecture(architecture: str, params: dict) -> str:
    p = ", ".join(f"{k}={v}" for k, v in sorted(params.items()))
    names = {"mlp": "MLP classifier", "cnn": "CNN classifier", "mlp_ae": "MLP autoencoder",
             "conv_ae": "conv autoencoder"}
    return f"{names[architecture]} ({p})" if p else names[architecture]


# --------------------------------------------------------------------------- the zoo
def _spec(name, architecture, params, seed, epochs, train_samples=None, lr=1e-3, note=""):
    return {"name": name, "architecture": architecture, "params": params, "seed": seed, "epochs": epochs,
            "train_samples": train_samples, "lr": lr, "note": note}


SPECS: list[dict] = [
    *[_spec(f"mlp-s{s}", "mlp", {"width": 128}, s, 60, note="same architecture, different seed") for s in (0, 1, 2)],
    _spec("mlp-wide", "mlp", {"width": 256}, 0, 60, note="twice as wide"),
    _spec("mlp-untrained", "mlp", {"width": 128}, 0, 0, note="random initialisation, never trained"),
    *[_spec(f"cnn-s{s}", "cnn", {"channels": 16}, s, 40, note="small CNN") for s in (0, 1)],
    *[_spec(f"mlp-ae-b{b}", "mlp_ae", {"bottleneck": b}, 0, 150) for b in (2, 8, 32)],
    *[_spec(f"conv-ae-b{b}", "conv_ae", {"bottleneck": b}, 0, 150) for b in (2, 8, 32)],
    _spec("mlp-ae-memorize", "mlp_ae", {"bottleneck": 32}, 0, 3000, train_samples=10, lr=3e-3,
          note="deliberately overfit on 10 training images"),
    # Training checkpoints of mlp-ae-b8: the same run stopped early (each epoch draws the same
    # batches from the same generator, so k epochs here are the first k epochs of mlp-ae-b8).
    *[dict(_spec(f"mlp-ae-b8-ep{e}", "mlp_ae", {"bottleneck": 8}, 0, e,
                 note=f"mlp-ae-b8 after {e} of its 150 epochs (training checkpoint)"), checkpoint_of="mlp-ae-b8")
      for e in (0, 1, 5, 20)],
]
CHECKPOINT_EPOCHS = (0, 1, 5, 20)


def train(spec: dict, log=print) -> tuple[nn.Module, dict]:
    """Train one zoo model from its seed; deterministic on a given platform."""
    from .data import digits_split

    torch.manual_seed(spec["seed"])
    model = build_model(spec["architecture"], spec["params"])
    split = digits_split()
    x_tr, y_tr = (torch.from_numpy(a) for a in split["train"])
    x_te, y_te = (torch.from_numpy(a) for a in split["test"])
    if spec.get("train_samples"):
        g = torch.Generator().manual_seed(spec["seed"])
        pick = torch.randperm(len(x_tr), generator=g)[: spec["train_samples"]]
        x_tr, y_tr = x_tr[pick], y_tr[pick]
    kind = KIND[spec["architecture"]]
    loss_fn = nn.CrossEntropyLoss() if kind == "classifier" else nn.MSELoss()
    opt = torch.optim.Adam(model.parameters(), lr=spec["lr"])
    gen = torch.Generator().manual_seed(spec["seed"] + 1000)
    batch = 64
    for epoch in range(spec["epochs"]):
        model.train()
        order = torch.randperm(len(x_tr), generator=gen)
        for i in range(0, len(order), batch):
            b = order[i: i + batch]
            out = model(x_tr[b])
            loss = loss_fn(out, y_tr[b] if kind == "classifier" else x_tr[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    metrics = evaluate_split(model, kind, x_tr, y_tr, "train")
    metrics.update(evaluate_split(model, kind, x_te, y_te, "test"))
    metrics["train_samples"] = int(len(x_tr))
    log(f"{spec['name']}: {metrics}")
    return model, metrics


@torch.no_grad()
def evaluate_split(model: nn.Module, kind: str, x, y, prefix: str) -> dict:
    model.eval()
    out = model(torch.as_tensor(x))
    if kind == "classifier":
        return {f"{prefix}_accuracy": float((out.argmax(1) == torch.as_tensor(y)).double().mean())}
    return {f"{prefix}_mse": float(((out.double() - torch.as_tensor(x).double()) ** 2).mean())}


def save_checkpoint(model: nn.Module, path: Path, metadata: dict) -> str:
    """Write ``model``'s weights as safetensors and return the file's sha256.

    safetensors writes ``__metadata__`` in hash-map order, which varies from run to run, so the same
    weights could give different bytes. The header is rewritten with its keys in sorted order, and a
    file that already holds exactly these tensors and metadata is left untouched (a rebuild keeps
    every unchanged checkpoint byte for byte). New bytes are written to a temporary file and renamed
    into place, so a reader never sees a half-written checkpoint.
    """
    from safetensors.torch import load as st_load, save as st_save

    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    meta = {k: json.dumps(v) for k, v in metadata.items()}
    if path.exists():
        old = path.read_bytes()
        try:
            same = _safetensors_meta(old) == meta and _same_tensors(st_load(old), state)
        except Exception:  # an unreadable old file is simply replaced
            same = False
        if same:
            return hashlib.sha256(old).hexdigest()
    data = _canonical_header(st_save(state, metadata=meta))
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return hashlib.sha256(data).hexdigest()


def _safetensors_meta(data: bytes) -> dict:
    n = int.from_bytes(data[:8], "little")
    return dict(json.loads(data[8: 8 + n]).get("__metadata__") or {})


def _same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


def _canonical_header(data: bytes) -> bytes:
    """The same file with ``__metadata__``'s keys sorted (same header length, same padding)."""
    n = int.from_bytes(data[:8], "little")
    raw = data[8: 8 + n]
    header = json.loads(raw)
    if "__metadata__" in header:
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    stripped = raw.rstrip(b" ")
    if len(text) != len(stripped):  # not the compact form we expect: keep the library's bytes
        return data
    return data[:8] + text + raw[len(stripped):] + data[8 + n:]


def build(out_dir: Path = ZOO_DIR, only: list[str] | None = None, log=print) -> list[dict]:
    """Train the zoo and write checkpoints plus manifest.json."""
    torch.set_num_threads(1)  # one thread: the same float summation order on every run
    torch.use_deterministic_algorithms(True)
    out_dir.mkdir(parents=True, exist_ok=True)
    old = {e["name"]: e for e in json.loads((out_dir / "manifest.json").read_text())["models"]} \
        if (out_dir / "manifest.json").exists() else {}
    entries = []
    for spec in SPECS:
        if only and spec["name"] not in only:
            if spec["name"] in old:
                entries.append(old[spec["name"]])
            continue
        t0 = time.time()
        model, metrics = train(spec, log=log)
        meta = {"architecture": spec["architecture"], "params": spec["params"]}
        sha = save_checkpoint(model, out_dir / f"{spec['name']}.safetensors", meta)
        entry = {
            "name": spec["name"],
            "architecture": spec["architecture"],
            "params": spec["params"],
            "description": describe_architecture(spec["architecture"], spec["params"]),
            "kind": KIND[spec["architecture"]],
            "seed": spec["seed"],
            "bottleneck": spec["params"].get("bottleneck"),
            "epochs": spec["epochs"],
            "lr": spec["lr"],
            "data": DATA_NOTE,
            "parameters": int(sum(p.numel() for p in model.parameters())),
            "note": spec["note"],
            "file": f"{spec['name']}.safetensors",
            "sha256": sha,
            # an unchanged checkpoint keeps the time of the run that wrote it (a clean manifest diff)
            "train_seconds": old[spec["name"]]["train_seconds"]
            if old.get(spec["name"], {}).get("sha256") == sha else round(time.time() - t0, 1),
            **metrics,
        }
        if spec.get("checkpoint_of"):
            entry["checkpoint_of"] = spec["checkpoint_of"]
        entries.append(entry)
    manifest = {"version": 1, "torch": torch.__version__, "models": entries}
    tmp = out_dir / f".manifest.json.tmp{os.getpid()}"
    tmp.write_text(json.dumps(manifest, indent=1) + "\n")
    os.replace(tmp, out_dir / "manifest.json")  # readers see the old or the new manifest, never half
    return entries


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m analysis.zoo", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="train every zoo model and write assets/zoo")
    b.add_argument("--out", type=Path, default=ZOO_DIR)
    b.add_argument("--only", nargs="*", help="names of models to rebuild (others are kept)")
    sub.add_parser("list", help="print the manifest")
    args = ap.parse_args(argv)
    if args.cmd == "build":
        build(args.out, args.only)
    else:
        for e in json.loads(MANIFEST.read_text())["models"]:
            score = e.get("test_accuracy", e.get("test_mse"))
            print(f"{e['name']:18s} {e['description']:40s} test {score:.4f}")


if __name__ == "__main__":
    main()
