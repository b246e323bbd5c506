"""Uploaded torch.export programs (``.pt2``): checked from their JSON in the server, then loaded
(without unpickling, see :mod:`analysis.models.export_check`) and run only in the sandboxed worker,
like TorchScript. Unlike TorchScript they keep their module tree (``torch.export.unflatten``), so
their submodules are layers: the worker runs forward hooks on them and sends their outputs back."""
from __future__ import annotations

from ..errors import UserInputError
from .sandbox import inert
from .torch_models import SandboxedScriptModel


class SandboxedExportModel(SandboxedScriptModel):
    """A torch.export program in its sandboxed worker; layers are its leaf submodules in the order
    they run, and ``output``."""

    scripted = False  # its submodules take hooks (in the sandbox)

    def __init__(self, worker, probe: dict, ref: str, filename: str, sha256: str):
        super().__init__(worker, probe, ref, filename, sha256)
        self.architecture = "torch.export program (run in a sandbox)"
        self.layers = list(probe["layers"]) + ["output"]

    def layer_outputs(self, batch, layers: list[str]) -> dict:
        """Outputs of ``layers`` for one batch, computed in the sandbox (one forward pass)."""
        import torch

        inner = [l for l in layers if l != "output"]
        arrays = self.worker.call("forward", batch.inputs.detach().cpu().numpy(), layers=inner or None)
        outs = dict(zip(inner, arrays[1:]))
        outs["output"] = arrays[0]
        return {l: torch.from_numpy(outs[l]) for l in layers}


def from_export(data: bytes, ref: str, filename: str, sha: str) -> SandboxedExportModel:
    """Check the archive here (its JSON only: nothing is unpickled, no worker is started for a
    refused file), then load, check again and probe it in a sandboxed worker."""
    from .. import tabular
    from .export_check import Refused, check_archive
    from .sandbox import ModelWorker

    try:
        check_archive(data, 4 * tabular.max_upload_bytes())
    except Refused as exc:
        ops = f" ({', '.join(inert(o, 60) for o in exc.operators[:5])})" if exc.operators else ""
        raise UserInputError(f"{filename} was refused without running anything: {exc.reason}{ops}. RepLens runs "
                             "torch.export programs (torch.export.save) made of numeric tensor operators, with "
                             "plain tensor weights.") from None
    worker = ModelWorker(data, filename, fmt="pt2")
    try:
        probe = worker.open()
    except BaseException:
        worker.close()
        raise
    if probe["n_inputs"] is None:
        worker.close()
        raise UserInputError(f"{filename}: the exported program did not run on (n, d) float inputs for any d "
                             "tried; export it with a dynamic batch dimension (torch.export.Dim) on (n, d) rows.")
    return SandboxedExportModel(worker, probe, ref, filename, sha)
