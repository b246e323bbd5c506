"""SAELens files: ``cfg.json`` + ``sae_weights.safetensors`` as SAELens writes and reads them
(read from a folder, from uploaded bytes or a zip of both, and written to a folder or a zip), so
SAEs trained elsewhere open here and ours open in SAELens. sae-lens itself is not needed."""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import torch

from ..errors import UserInputError
from .model import SparseAutoencoder, from_arrays

SAELENS_ARCHITECTURE = {"topk": "topk", "batchtopk": "jumprelu", "relu": "standard", "jumprelu": "jumprelu"}
SAELENS_CFG, SAELENS_WEIGHTS = "cfg.json", "sae_weights.safetensors"


def saelens_config(sae: SparseAutoencoder, metadata: dict | None = None) -> dict:
    """The cfg.json SAELens writes for this SAE (BatchTopK is saved as JumpReLU, as SAELens does)."""
    cfg = {"architecture": SAELENS_ARCHITECTURE[sae.kind], "d_in": sae.d_in, "d_sae": sae.d_sae, "dtype": "float32",
           "device": "cpu", "apply_b_dec_to_input": bool(sae.apply_b_dec_to_input), "normalize_activations": "none",
           "reshape_activations": "none", "metadata": {"replens_kind": sae.kind, **(metadata or {})}}
    if sae.kind == "topk":
        cfg.update(k=sae.k, rescale_acts_by_decoder_norm=False)
    if sae.kind == "batchtopk":
        cfg["metadata"]["replens_k"] = sae.k
    return cfg


def saelens_weights(sae: SparseAutoencoder) -> dict[str, torch.Tensor]:
    names = ["W_enc", "W_dec", "b_enc", "b_dec"] + (["threshold"] if sae.kind in ("jumprelu", "batchtopk") else [])
    return {name: getattr(sae, name).detach().cpu().contiguous() for name in names}


def save_saelens(sae: SparseAutoencoder, folder, metadata: dict | None = None) -> Path:
    """Write ``cfg.json`` + ``sae_weights.safetensors`` (what ``sae_lens.SAE.load_from_disk`` reads)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(saelens_weights(sae), str(folder / SAELENS_WEIGHTS))
    (folder / SAELENS_CFG).write_text(json.dumps(saelens_config(sae, metadata), indent=2))
    return folder


def load_saelens(folder) -> SparseAutoencoder:
    """An SAE saved by SAELens (or by :func:`save_saelens`): standard, topk, jumprelu (and our
    batchtopk, stored as jumprelu)."""
    folder = Path(folder)
    for name in (SAELENS_CFG, SAELENS_WEIGHTS):
        if not (folder / name).exists():
            raise UserInputError(f"{folder} has no {name}: an SAELens SAE folder holds {SAELENS_CFG} and {SAELENS_WEIGHTS}.")
    return from_saelens_bytes((folder / SAELENS_CFG).read_bytes(), (folder / SAELENS_WEIGHTS).read_bytes())


def from_saelens_bytes(cfg_bytes: bytes, weights_bytes: bytes) -> SparseAutoencoder:
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        cfg = json.loads(cfg_bytes)
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserInputError(f"{SAELENS_CFG} is not valid JSON ({exc}).") from exc
    arch = cfg.get("architecture", "standard")
    kinds = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu"}
    if arch not in kinds:
        raise UserInputError(f"SAE architecture {arch!r} is not supported; RepLens reads standard, topk and jumprelu "
                             "(BatchTopK SAEs are saved as jumprelu).")
    if cfg.get("normalize_activations", "none") not in ("none", None):
        raise UserInputError(f"This SAE expects normalised inputs ({cfg['normalize_activations']}); fold the "
                             "normalisation into its weights in SAELens before saving.")
    meta = cfg.get("metadata") or {}
    kind = kinds[arch]
    k = int(cfg.get("k", 16))
    if arch == "jumprelu" and meta.get("replens_kind") == "batchtopk":
        kind, k = "batchtopk", int(meta.get("replens_k", k))
    try:
        tensors = load(weights_bytes)
    except (SafetensorError, ValueError, OSError) as exc:
        raise UserInputError(f"{SAELENS_WEIGHTS} is not a valid safetensors file ({exc}).") from exc
    if "threshold" not in tensors and "log_threshold" in tensors:
        tensors["threshold"] = tensors.pop("log_threshold").exp()
    sae = from_arrays({n: t.numpy() for n, t in tensors.items()}, kind, k, bool(cfg.get("apply_b_dec_to_input", True)))
    if int(cfg.get("d_in", sae.d_in)) != sae.d_in or int(cfg.get("d_sae", sae.d_sae)) != sae.d_sae:
        raise UserInputError("cfg.json's d_in / d_sae disagree with the weights' shapes.")
    sae.train_info = {"saelens_cfg": cfg}
    return sae


def from_saelens_upload(files: dict[str, bytes], d_in: int | None = None) -> tuple[SparseAutoencoder, str]:
    """An SAE uploaded as its two SAELens files, or as one zip holding them (what the page's download
    gives); returns it and the sha256 of its weights file. ``d_in``: the layer width it must read."""
    import hashlib

    from .. import tabular

    files = dict(files)
    for name, data in files.items():
        tabular.check_size(data, name)
    zips = [n for n in files if n.lower().endswith(".zip")]
    if zips:
        try:
            with zipfile.ZipFile(io.BytesIO(files[zips[0]])) as zf:
                if sum(i.file_size for i in zf.infolist()) > 4 * tabular.max_upload_bytes():
                    raise UserInputError(f"{zips[0]} unpacks to more than this server accepts.")
                files = {Path(n).name: zf.read(n) for n in zf.namelist() if Path(n).name in (SAELENS_CFG, SAELENS_WEIGHTS)}
        except zipfile.BadZipFile as exc:
            raise UserInputError(f"{zips[0]} is not a zip archive.") from exc
    cfg = next((d for n, d in files.items() if n.lower().endswith(".json")), None)
    weights = next((d for n, d in files.items() if n.lower().endswith(".safetensors")), None)
    if cfg is None or weights is None:
        raise UserInputError(f"An SAELens SAE is two files: {SAELENS_CFG} and {SAELENS_WEIGHTS} (or a zip of both).")
    sae = from_saelens_bytes(cfg, weights)
    if d_in is not None and sae.d_in != d_in:
        raise UserInputError(f"This SAE reads {sae.d_in}-dimensional activations but the layer has {d_in}: pick the "
                             "layer it was trained on.")
    return sae, hashlib.sha256(weights).hexdigest()


def saelens_zip(sae: SparseAutoencoder, metadata: dict | None = None) -> bytes:
    """The two SAELens files in one zip (for a download button)."""
    from safetensors.torch import save

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(SAELENS_CFG, json.dumps(saelens_config(sae, metadata), indent=2))
        zf.writestr(SAELENS_WEIGHTS, save(saelens_weights(sae)))
    return buf.getvalue()
