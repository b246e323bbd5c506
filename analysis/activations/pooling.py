"""Pooling rules: one batch of a layer's raw output -> one row per sample (or per token).

- (b, d) outputs are kept as they are;
- token outputs (b, t, d) of transformers (text, and the patch tokens of vision transformers):
  "mean" averages the valid tokens (attention mask), "first" takes the first token ([CLS]),
  "last" the last valid token (wherever the padding is: left-padded decoder batches included),
  "tokens" keeps every valid token as a row of its own (token-level analyses);
- spatial outputs (b, c, h, w) or (b, c, l): "mean" averages over positions, "flatten" keeps all;
- "auto" picks per layer kind: spatial outputs are flattened up to AUTO_FLATTEN_MAX values per
  sample (a spatial mean discards where features are, and two models that place the same features
  differently then look unrelated: CKA 0.13 between a CNN's conv1 and an MLP's fc1 under the mean,
  0.91 flattened), their spatial mean beyond; token outputs take the mean over valid tokens.
"""
from __future__ import annotations

from ..errors import UserInputError

# Rules that give one row per sample (what views compare across two models) ...
POOLINGS = ("auto", "mean", "first", "last", "flatten")
AUTO_FLATTEN_MAX = 4096  # values per sample up to which "auto" flattens a spatial output
# ... and the one that gives one row per valid token (rows differ between tokenizers).
TOKENS = "tokens"
ALL_POOLINGS = POOLINGS + (TOKENS,)


def check(pooling: str) -> None:
    if pooling not in ALL_POOLINGS:
        raise UserInputError(f"Unknown pooling {pooling!r}; use one of {', '.join(ALL_POOLINGS)}.")


def first_tensor(out):
    """The tensor of a module output (transformer blocks return tuples, models return outputs)."""
    if isinstance(out, (tuple, list)):
        out = out[0]
    if hasattr(out, "last_hidden_state"):
        out = out.last_hidden_state
    return out


def last_valid_index(mask):
    """Index of each row's last valid token: the last 1 of the attention mask, so right padding
    (tokens first) and left padding (tokens last) both give the sentence's final token."""
    import torch

    t = mask.shape[1]
    flipped = torch.flip(mask.to(torch.int64), dims=[1])
    return (t - 1 - flipped.argmax(1)).clamp_min(0)


def pool(out, pooling: str, mask=None, tokens: bool = False):
    """Pool one batch of a layer's output; returns (tensor, rule description).

    With ``pooling="tokens"`` the tensor holds the valid tokens of every sample, sample after
    sample (their counts are :func:`token_counts`)."""
    out = out.float()
    if out.ndim == 1:
        out = out[:, None]
    if out.ndim == 2:
        if pooling == TOKENS:
            raise UserInputError("Pooling 'tokens' keeps every token as a row, but this layer gives one vector "
                                 "per sample. Pick a transformer block, or pool with 'mean'.")
        return out, "as is"
    if tokens and out.ndim == 3:
        return _pool_tokens("mean" if pooling == "auto" else pooling, out, mask)
    if pooling == "auto":
        size = out[0].numel()
        if size <= AUTO_FLATTEN_MAX:
            return out.flatten(1), f"flattened (at most {AUTO_FLATTEN_MAX:,} values)"
        return out.flatten(2).mean(-1), f"spatial mean (over {AUTO_FLATTEN_MAX:,} values flattened)"
    if pooling == "mean":
        return out.flatten(2).mean(-1), "spatial mean"
    if pooling == "flatten":
        return out.flatten(1), "flatten"
    raise UserInputError(f"Pooling '{pooling}' applies to token outputs only; this layer outputs shape "
                         f"{tuple(out.shape[1:])}. Use 'mean' (spatial mean) or 'flatten'.")


def _pool_tokens(pooling: str, out, mask):
    if pooling == "mean":
        if mask is None:
            return out.mean(1), "mean over tokens"
        m = mask.to(out.dtype).unsqueeze(-1)
        return (out * m).sum(1) / m.sum(1).clamp_min(1.0), "mean over valid tokens (attention mask)"
    if pooling == "first":
        return out[:, 0], "first token"
    if pooling == "last":
        if mask is None:
            return out[:, -1], "last token"
        import torch

        rows = torch.arange(out.shape[0], device=out.device)
        return out[rows, last_valid_index(mask).to(out.device)], "last valid token (attention mask)"
    if pooling == TOKENS:
        if mask is None:
            return out.reshape(-1, out.shape[-1]), "every token"
        return out[mask.bool()], "every valid token (attention mask)"
    raise UserInputError("Pooling 'flatten' is not defined for token outputs: sentences have different "
                         "lengths. Use 'mean', 'first', 'last' or 'tokens'.")


def token_counts(mask, batch: int, length: int):
    """Valid tokens per sample of a batch (what ``pool(..., "tokens")`` keeps of each)."""
    import numpy as np

    if mask is None:
        return np.full(batch, length, dtype=np.int64)
    return mask.bool().sum(1).cpu().numpy().astype(np.int64)
