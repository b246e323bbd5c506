"""Tiny random-init transformers models of each family, written as folders (no network): the
config, safetensors weights and a tokenizer (MiniLM's WordPiece; for decoders without a pad token,
as GPT-2 and Llama ship) or an image processor."""
from __future__ import annotations

from pathlib import Path

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
VOCAB = 30522  # MiniLM's tokenizer


def _tokenizer(folder: Path, pad: bool = True, side: str = "right") -> None:
    from transformers import AutoTokenizer

    from analysis.models.hf import minilm_path

    tok = AutoTokenizer.from_pretrained(str(minilm_path()))
    tok.padding_side = side
    if not pad:  # a decoder's tokenizer: no pad token, an end-of-text token
        tok.eos_token = "[SEP]"
        tok.pad_token = None
    tok.save_pretrained(folder)


def _image_processor(folder: Path, size: int = 32) -> None:
    from transformers import ViTImageProcessor

    ViTImageProcessor(size={"height": size, "width": size}).save_pretrained(folder)


def _config(name: str):
    import transformers as t

    if name == "gpt2":
        return t.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2, n_positions=128, bos_token_id=101,
                            eos_token_id=102)
    if name == "llama":
        return t.LlamaConfig(vocab_size=VOCAB, max_position_embeddings=128, num_key_value_heads=1, **TINY)
    if name == "qwen2":
        return t.Qwen2Config(vocab_size=VOCAB, max_position_embeddings=128, num_key_value_heads=1, **TINY)
    if name == "gpt_neox":  # Pythia
        return t.GPTNeoXConfig(vocab_size=VOCAB, max_position_embeddings=128, **TINY)
    if name == "bert":
        return t.BertConfig(vocab_size=VOCAB, max_position_embeddings=128, **TINY)
    if name == "t5":
        return t.T5Config(vocab_size=VOCAB, d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2)
    if name == "vit":
        return t.ViTConfig(image_size=32, patch_size=8, **TINY)
    if name == "dinov2":
        return t.Dinov2Config(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
                              num_attention_heads=2, mlp_ratio=2)
    if name == "convnext":
        return t.ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 2], num_stages=2, image_size=32)
    if name == "clip":
        return t.CLIPConfig(text_config=dict(vocab_size=VOCAB, max_position_embeddings=64, **TINY),
                            vision_config=dict(image_size=32, patch_size=8, **TINY), projection_dim=16)
    raise KeyError(name)


DECODERS = ("gpt2", "llama", "qwen2", "gpt_neox")
TEXT = DECODERS + ("bert", "t5", "clip")
VISION = ("vit", "dinov2", "convnext", "clip")


def save_tiny(name: str, folder: Path, padding_side: str | None = None, **sizes) -> Path:
    """A tiny random ``name`` model saved in ``folder`` (created); ``sizes`` override config
    fields (``n_layer=4, n_embd=128`` for a larger GPT-2, as benchmarks/extraction.py builds)."""
    import torch
    from transformers import AutoModel

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    config = _config(name)
    for field, value in sizes.items():
        setattr(config, field, value)
    AutoModel.from_config(config).save_pretrained(folder)
    if name in TEXT:
        _tokenizer(folder, pad=name not in DECODERS,
                   side=padding_side or ("left" if name in ("llama", "qwen2") else "right"))
    if name in VISION:
        _image_processor(folder)
    return folder
