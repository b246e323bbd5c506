"""torch.export archives (``.pt2``): checked from their JSON before anything is loaded, and loaded
without unpickling anything.

What ``torch.export.load`` does (torch 2.13, ``torch/export/pt2_archive/_package.py`` and
``torch/_export/serde/serialize.py``): it reads ``models/<name>.json`` (the graph, JSON), the
weights and constants as raw tensor bytes described by ``*_config.json``, and it **unpickles**:
weights and constants whose config says ``use_pickle`` (``torch.load(weights_only=False)``),
custom and opaque objects (``torch._C._pickle_load_obj``, ``pickle.loads``), legacy
``weights/<name>.pt`` files, and always ``sample_inputs/<name>.pt`` (``torch.load`` with
``weights_only=True`` first, then **falling back to** ``weights_only=False`` when that fails). It
also loads AOTInductor shared libraries when the archive holds them. So a hostile ``.pt2`` runs
code at ``torch.export.load``.

RepLens never calls ``torch.export.load``. :func:`check_archive` reads the zip's names and JSON with
the standard library and refuses an archive with anything to unpickle (``use_pickle``, custom or
opaque objects, legacy ``.pt`` payloads), with native code (AOTInductor), or with an operator
outside the allowlist (:mod:`graph_check`, plus the shape and control-flow operators exported
graphs are made of). :func:`load_program` then builds the program from the same pieces torch uses
(the JSON graph, raw tensor bytes) and passes no sample inputs, so no pickle is read; it walks the
loaded graph (every submodule graph, the bodies of ``cond``) once more. Both run inside the
sandboxed worker; the server runs :func:`check_archive` before it starts a worker at all.

Standard library only at import (the sandbox imports this file on its own); torch is imported in
:func:`load_program`.
"""
from __future__ import annotations

import io
import json
import zipfile

try:  # inside the sandbox this file sits next to graph_check.py, outside the analysis package
    from . import graph_check
except ImportError:  # pragma: no cover - the sandbox's import path
    import graph_check

# Operators exported graphs use besides graph_check's numeric allowlist: shape queries and
# runtime shape asserts, decomposed forms of allowed operators, and two control-flow forms.
EXPORT_ALLOWED = frozenset({
    "aten::sym_size", "aten::sym_numel", "aten::sym_stride", "aten::sym_storage_offset",
    "aten::_assert_scalar", "aten::_assert_tensor_metadata", "aten::sym_constrain_range_for_size",
    "aten::sym_constrain_range", "aten::_assert_async", "aten::_functional_assert_async",
    "aten::alias", "aten::_to_copy", "aten::_unsafe_view", "aten::view_copy", "aten::lift_fresh_copy",
    "aten::native_dropout", "aten::_native_batch_norm_legit_no_training", "aten::_native_batch_norm_legit",
    "aten::_native_batch_norm_legit_functional", "aten::_safe_softmax", "aten::_scaled_dot_product_flash_attention_for_cpu",
    "aten::_scaled_dot_product_efficient_attention", "aten::expand_copy", "aten::permute_copy",
    "aten::transpose_copy", "aten::unsqueeze_copy", "aten::squeeze_copy", "aten::slice_copy", "aten::select_copy",
    "aten::t_copy", "aten::_log_softmax", "aten::_softmax", "aten::empty", "aten::empty_like", "aten::new_empty",
    "aten::sym_is_contiguous",
    "higher_order::cond", "_operator::getitem", "_operator::add", "_operator::sub", "_operator::mul",
    "_operator::floordiv", "_operator::truediv", "_operator::mod", "_operator::neg", "_operator::eq",
    "_operator::ne", "_operator::lt", "_operator::le", "_operator::gt", "_operator::ge",
    "torch::sym_max", "torch::sym_min", "torch::sym_sum", "math::ceil", "math::floor", "math::trunc",
})
MAX_MEMBERS = 100_000
MAX_JSON_BYTES = 64 << 20
_KNOWN = ("archive_format", "archive_version", "byteorder", ".data/version", ".data/serialization_id")


class Refused(Exception):
    """The archive is not one RepLens loads; ``reason`` says why (shown inert)."""

    def __init__(self, reason: str, operators=()):
        super().__init__(reason)
        self.reason, self.operators = reason, list(operators)


def normalize(target) -> str:
    """``torch.ops.aten.add.Tensor`` / ``aten.add.Tensor`` / an OpOverload -> ``aten::add``;
    ``torch.ops.higher_order.cond`` or the cond operator -> ``higher_order::cond``;
    ``_operator.getitem`` or the builtin -> ``_operator::getitem``."""
    if not isinstance(target, str):
        ns = getattr(target, "namespace", None)
        if ns is not None:  # OpOverload, OpOverloadPacket, HigherOrderOperator
            name = getattr(target, "_opname", None) or getattr(target, "__name__", None) or target.name()
            return f"{ns}::{str(name).split('.')[0]}"
        return f"{getattr(target, '__module__', '') or ''}::{getattr(target, '__name__', str(target))}"
    text = target.strip()
    if text.startswith("torch.ops."):
        text = text[len("torch.ops."):]
    if "::" in text:
        return text.split(".")[0]
    parts = text.split(".")
    return f"{parts[0]}::{parts[1]}" if len(parts) >= 2 else f"::{text}"


def is_allowed(target) -> bool:
    name = normalize(target)
    return name in EXPORT_ALLOWED or graph_check.is_allowed(name)


def refused(targets) -> list[str]:
    return sorted({normalize(t) for t in targets if not is_allowed(t)})


def _graph_targets(graph: dict, found: dict, where: str) -> None:
    for node in graph.get("nodes", []):
        found.setdefault(str(node.get("target")), where)
        for arg in node.get("inputs", []):
            inner = (arg.get("arg") or {}).get("as_graph") if isinstance(arg, dict) else None
            if isinstance(inner, dict) and isinstance(inner.get("graph"), dict):
                _graph_targets(inner["graph"], found, f"{where}/{node.get('name', '?')}")


def _payloads(config: dict, what: str) -> None:
    for fqn, meta in (config.get("config") or {}).items():
        path = str(meta.get("path_name", ""))
        if meta.get("use_pickle") or path.startswith(("custom_obj_", "opaque_obj_")) or path.endswith(".pt"):
            raise Refused(f"its {what} {fqn!r} is stored as a pickle or a custom object, which RepLens never loads")


def check_archive(data: bytes, max_unpacked: int) -> dict:
    """Check a ``.pt2`` from its zip directory and JSON; returns {"model": name, "operators": {op: where}}.
    Raises :class:`Refused`."""
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError) as exc:
        raise Refused(f"it is not a torch.export archive ({type(exc).__name__})") from exc
    with zf:
        infos = zf.infolist()
        if len(infos) > MAX_MEMBERS or sum(i.file_size for i in infos) > max_unpacked:
            raise Refused("it unpacks to more files or bytes than an upload may")
        names = [i.filename for i in infos]
        top = names[0].split("/", 1)[0] + "/" if names and "/" in names[0] else ""
        rel = [n[len(top):] if n.startswith(top) else n for n in names]
        models = [r for r in rel if r.startswith("models/") and r.endswith(".json")]
        if "archive_format" not in rel or len(models) != 1:
            raise Refused("it is not a torch.export archive with one program (torch.export.save)")
        for r in rel:
            ok = r in _KNOWN or r in models or r.startswith(("data/weights/", "data/constants/", "data/sample_inputs/"))
            if not ok or r.endswith((".so", ".dll", ".dylib", ".cpp")) or r.startswith("data/aotinductor"):
                raise Refused(f"it holds {r!r}, which is not part of an exported program (compiled code, or an "
                              "unknown file)")
        name = models[0][len("models/"):-len(".json")]

        def read_json(member: str):
            info = zf.getinfo(top + member)
            if info.file_size > MAX_JSON_BYTES:
                raise Refused(f"{member} is too large")
            return json.loads(zf.read(info))

        for what, member in (("weight", f"data/weights/{name}_weights_config.json"),
                             ("constant", f"data/constants/{name}_constants_config.json")):
            if member in rel:
                _payloads(read_json(member), what)
            elif any(r.startswith(member.rsplit("/", 1)[0] + "/") for r in rel):
                raise Refused(f"its {what}s come without their config (a legacy archive, loaded by unpickling)")
        program = read_json(models[0])
    graph = (program.get("graph_module") or {}).get("graph") or {}
    if graph.get("custom_obj_values"):
        raise Refused("its graph holds custom objects (TorchBind), which RepLens never loads")
    found: dict = {}
    _graph_targets(graph, found, "forward")
    bad = refused(found)
    if bad:
        raise Refused("it uses operators outside the allowlist", bad)
    return {"model": name, "operators": found}


def graph_operators(program) -> dict[str, str]:
    """Every call target of a loaded ExportedProgram's graph and the graphs nested in it."""
    import torch

    found: dict[str, str] = {}
    for name, mod in program.graph_module.named_modules():
        if isinstance(mod, torch.fx.GraphModule):
            for node in mod.graph.nodes:
                if node.op in ("call_function", "call_method"):
                    found.setdefault(normalize(node.target), name or "forward")
    return found


def load_program(data: bytes, max_unpacked: int):
    """(hookable module, operators) of a checked archive, built without unpickling. Raises Refused."""
    import torch
    from torch._export.serde import schema
    from torch._export.serde.serialize import ExportedProgramDeserializer, _bytes_to_dataclass
    from torch.export.pt2_archive._package import PT2ArchiveReader, _load_constants, _load_state_dict

    name = check_archive(data, max_unpacked)["model"]
    with PT2ArchiveReader(io.BytesIO(data)) as reader:
        serialized = _bytes_to_dataclass(schema.ExportedProgram, reader.read_bytes(f"models/{name}.json"))
        state_dict = _load_state_dict(reader, name)  # raw tensor bytes only: checked above
        constants = _load_constants(reader, name)
        if isinstance(state_dict, bytes) or isinstance(constants, bytes):
            raise Refused("its weights are a legacy pickle")
        # example_inputs=None: the archive's sample inputs (a pickle) are never read
        program = ExportedProgramDeserializer().deserialize(serialized, state_dict, constants, None)
    found = graph_operators(program)
    bad = refused(found)
    if bad:
        raise Refused("it uses operators outside the allowlist", bad)
    return torch.export.unflatten(program), found
