"""The process inside the sandbox: loads one uploaded TorchScript model and runs its methods.

Started by :mod:`analysis.models.sandbox` as ``python -I -B sandbox_worker.py`` inside bubblewrap,
with this file and its two neighbours bound read-only at /replens. It imports only the standard
library, numpy, torch and those neighbours (``sandbox_protocol``, ``graph_check``), never the
``analysis`` package. Requests come on stdin, replies go out on what was stdout; the model's own
output (C++ prints) goes to stderr.

Order of events:
1. drop to the unprivileged user when started as root (``--drop-to``), then fix the hard limits;
2. import torch, say ``ready``;
3. ``load``: ``torch.jit.load`` runs the ``__setstate__`` methods of scripted classes, so loading
   already executes code; it happens here, under the per-call limits, and the operator allowlist
   (:mod:`graph_check`) runs right after, before any method is called. A refused model answers with
   the operators and nothing else;
4. ``probe`` and ``call``: forward / encode / decode on arrays, optionally with per-row Jacobians.

Every request carries its own CPU-seconds and memory budget: the soft ``RLIMIT_CPU`` is set to the
CPU used so far plus the budget (past it the kernel ends the process), the soft ``RLIMIT_AS`` to the
current address space plus the budget (past it allocations fail). Error texts from loading are not
sent (only the exception's type): nothing the model computed before the check leaves the sandbox.
"""
from __future__ import annotations

import os
import resource
import sys
import traceback

NOBODY = 65534
FILE_SIZE_LIMIT = 16 << 20
OPEN_FILES_LIMIT = 256
TASKS_LIMIT = 512
PROBE_WIDTHS = (64, 3, 16, 2, 8, 32, 128, 256, 512, 768, 784, 1024, 2048, 3072, 4096)
METHODS = ("forward", "encode", "decode")
SUBMODULES = {"encode": "encoder", "decode": "decoder"}


def drop_privileges(uid: int) -> None:
    """Become ``uid`` for good (all of real, effective and saved ids, no groups): the kernel then
    clears every capability, so the model runs as that user, not as root without capabilities."""
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    if os.getuid() != uid or os.geteuid() != uid or _capabilities() != 0:
        raise SystemExit("the sandbox worker could not drop its privileges")


def _capabilities() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return -1


def fix_hard_limits(cpu_budget_s: int) -> None:
    for limit, value in ((resource.RLIMIT_CORE, 0), (resource.RLIMIT_FSIZE, FILE_SIZE_LIMIT),
                         (resource.RLIMIT_NOFILE, OPEN_FILES_LIMIT), (resource.RLIMIT_NPROC, TASKS_LIMIT),
                         (resource.RLIMIT_CPU, cpu_budget_s)):
        resource.setrlimit(limit, (value, value))


def fix_memory_limit(memory_bytes: int) -> None:
    """The most address space any request may add to what the worker holds once torch is loaded."""
    total = _address_space() + memory_bytes
    resource.setrlimit(resource.RLIMIT_AS, (total, total))


def _address_space() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * resource.getpagesize()


def _cpu_used() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def set_call_limits(cpu_s: float, memory_bytes: int) -> None:
    cpu_hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
    resource.setrlimit(resource.RLIMIT_CPU, (min(int(_cpu_used() + cpu_s) + 1, cpu_hard), cpu_hard))
    as_hard = resource.getrlimit(resource.RLIMIT_AS)[1]
    resource.setrlimit(resource.RLIMIT_AS, (min(_address_space() + memory_bytes, as_hard), as_hard))


def release_call_limits() -> None:
    for limit in (resource.RLIMIT_CPU, resource.RLIMIT_AS):
        hard = resource.getrlimit(limit)[1]
        resource.setrlimit(limit, (hard, hard))


class Worker:
    def __init__(self, read_fd: int, write_fd: int):
        self.read_fd, self.write_fd = read_fd, write_fd
        self.module = None

    # -- pipe
    def read_exact(self, n: int) -> bytes:
        chunks, got = [], 0
        while got < n:
            chunk = os.read(self.read_fd, min(n - got, 1 << 20))
            if not chunk:
                raise EOFError
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)

    def send(self, header: dict, arrays=()) -> None:
        data = memoryview(sandbox_protocol.encode(header, arrays))
        while data:
            data = data[os.write(self.write_fd, data):]

    # -- requests
    def serve(self) -> None:
        self.send({"ok": True, "ready": True, "uid": os.getuid(), "torch": torch.__version__})
        while True:
            try:
                header, arrays = sandbox_protocol.read_message(self.read_exact, 1 << 40)
            except EOFError:
                return
            limits = header.get("limits") or {}
            set_call_limits(float(limits.get("cpu_s", 10)), int(limits.get("memory", 1 << 30)))
            try:
                reply = self.handle(header, arrays)
            except Exception as exc:  # the model's failure, reported to the server as data
                reply = self.failure(header, exc)
            finally:
                release_call_limits()
            reply[0]["cpu_used"] = _cpu_used()
            self.send(*reply)

    def failure(self, header: dict, exc: Exception):
        if _out_of_memory(exc):
            return {"ok": False, "error": "memory"}, []
        if header.get("op") == "load":  # before the check: no text leaves the sandbox
            return {"ok": False, "error": "load", "type": type(exc).__name__}, []
        lines = [ln.strip() for ln in traceback.format_exception_only(exc)[-1].splitlines() if ln.strip()]
        return {"ok": False, "error": "model", "type": type(exc).__name__, "message": (lines or [""])[-1][:300]}, []

    def handle(self, header: dict, arrays: list):
        op = header.get("op")
        if op == "load":
            data = bytes(arrays[0].astype("uint8", copy=False).tobytes())
            if header.get("format") == "pt2":
                return self.load_export(data, int(header.get("max_unpacked", 1 << 30))), []
            return self.load(data), []
        if self.module is None:
            raise RuntimeError("no model is loaded")
        if op == "probe":
            return self.probe(), []
        if op == "call":
            if header.get("layers"):
                return self.call_layers(arrays[0], header["layers"])
            return self.call(header.get("method"), arrays[0], bool(header.get("jacobian")))
        raise RuntimeError(f"unknown request {op!r}")

    def load(self, data: bytes) -> dict:
        from torch.jit._recursive import wrap_cpp_module

        unit = torch._C.CompilationUnit()
        module = wrap_cpp_module(torch._C.import_ir_module_from_buffer(unit, data, torch.device("cpu"), {}, False))
        found = graph_check.script_operators(module, unit.get_functions())
        refused = graph_check.refused(found)
        if refused:
            return {"ok": False, "error": "refused", "refused": [[op, found.get(op, "")] for op in refused[:20]]}
        module.eval()
        for p in module.parameters():
            p.requires_grad_(False)
        self.module = module
        return {"ok": True, "operators": sorted(found)}

    def load_export(self, data: bytes, max_unpacked: int) -> dict:
        """A torch.export archive: checked and built without unpickling (export_check), then its
        submodules, restored by torch.export.unflatten, can take forward hooks."""
        import export_check

        try:
            module, found = export_check.load_program(data, max_unpacked)
        except export_check.Refused as exc:
            ops = exc.operators or ["(archive) " + exc.reason]
            return {"ok": False, "error": "refused", "refused": [[op, ""] for op in ops[:20]]}
        module.eval()
        for p in module.parameters():
            p.requires_grad_(False)
        self.module = module
        return {"ok": True, "operators": sorted(found), "hookable": True}

    def call_layers(self, x, layers: list) -> tuple:
        """forward on the rows of ``x`` with the outputs of the named submodules: [output, *layers]."""
        mods = dict(self.module.named_modules())
        if not isinstance(layers, list) or not all(isinstance(n, str) and n in mods for n in layers):
            raise RuntimeError("unknown layer")
        outs = {}
        handles = [mods[n].register_forward_hook(lambda m, i, o, n=n: outs.setdefault(n, _tensor(o).detach()))
                   for n in layers]
        try:
            with torch.no_grad():
                out = _tensor(self.module(torch.from_numpy(x)))
        finally:
            for h in handles:
                h.remove()
        missing = [n for n in layers if n not in outs]
        if missing:
            raise RuntimeError(f"layer {missing[0]} did not run")
        return {"ok": True}, [out.numpy()] + [outs[n].float().numpy() for n in layers]

    def forward_layers(self, d: int) -> list:
        """Leaf submodules in the order they run on zeros (what the server offers as layers)."""
        order = []
        leaves = [(n, m) for n, m in self.module.named_modules() if n and not list(m.children())]
        handles = [m.register_forward_hook(lambda mod, i, o, n=n: order.append(n) if n not in order else None)
                   for n, m in leaves]
        try:
            with torch.no_grad():
                self.module(torch.zeros(2, d))
        finally:
            for h in handles:
                h.remove()
        return order[:1000]

    # -- the model's methods
    def method(self, name: str):
        """forward, or encode / decode: the ``encoder`` / ``decoder`` submodule when there is one,
        else the exported method."""
        if name not in METHODS:
            raise RuntimeError(f"unknown method {name!r}")
        if name == "forward":
            return self.module
        sub = getattr(self.module, SUBMODULES[name], None)
        return sub if isinstance(sub, torch.nn.Module) else getattr(self.module, name)

    def has_latent_parts(self) -> bool:
        m = self.module
        submodules = all(isinstance(getattr(m, n, None), torch.nn.Module) for n in SUBMODULES.values())
        scripted = hasattr(m, "_c")  # an unflattened torch.export program has no TorchScript methods
        return submodules or (scripted and all(n in m._c._method_names() for n in ("encode", "decode")))

    def probe(self) -> dict:
        """The input width the model reads (the first of PROBE_WIDTHS it runs on), its output shape
        and whether encode/decode run: what the server needs to know before it offers the model."""
        with torch.no_grad():
            for d in PROBE_WIDTHS:
                try:
                    out = _tensor(self.module(torch.zeros(2, d)))
                except Exception as exc:
                    if _out_of_memory(exc):
                        raise  # the limit, not a wrong width: the server says so
                    continue
                if out.ndim >= 1 and out.shape[0] == 2:
                    break
            else:
                return {"ok": True, "n_inputs": None}
            latent = None
            if self.has_latent_parts():
                try:
                    z = _tensor(self.method("encode")(torch.zeros(2, d)))
                    back = _tensor(self.method("decode")(z))
                    latent = list(z.shape[1:]) if back.shape[0] == 2 else None
                except Exception:
                    latent = None
        layers = self.forward_layers(d) if not isinstance(self.module, torch.jit.ScriptModule) else None
        return {"ok": True, "n_inputs": d, "output_shape": list(out.shape[1:]), "latent_shape": latent,
                "parameters": int(sum(p.numel() for p in self.module.parameters())), "layers": layers}

    def call(self, name: str, x, jacobian: bool):
        fn = self.method(name)
        xt = torch.from_numpy(x)
        if not jacobian:
            with torch.no_grad():
                return {"ok": True}, [_tensor(fn(xt)).detach().numpy()]
        return {"ok": True}, list(_rows_jacobian(fn, xt))


def _out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc))


def _tensor(out):
    """The tensor of an output (a tuple or list gives its first element, as hooks see it)."""
    if isinstance(out, (tuple, list)) and out:
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"the model returned {type(out).__name__}, not a tensor")
    return out


def _rows_jacobian(fn, x):
    """fn(x) and, per row, d fn(x)[i] / d x[i] as (n, outputs, inputs): one backward pass per
    output coordinate of the batch sum (rows are independent in eval mode)."""
    n = x.shape[0]
    x = x.clone().requires_grad_(True)
    with torch.enable_grad():
        y = _tensor(fn(x))
        flat = y.reshape(n, -1)
        rows = [torch.autograd.grad(flat[:, j].sum(), x, retain_graph=True, allow_unused=True)[0]
                for j in range(flat.shape[1])]
    rows = [torch.zeros_like(x) if g is None else g for g in rows]
    jac = torch.stack([g.reshape(n, -1) for g in rows], 1) if rows else torch.zeros(n, 0, x[0].numel())
    return y.detach().numpy(), jac.numpy()


def main(argv: list[str]) -> None:
    # What was stdout carries the protocol; fd 1 becomes stderr, so a print from native code cannot
    # corrupt a reply.
    write_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    args = dict(zip(argv[::2], argv[1::2]))
    if "--drop-to" in args:
        drop_privileges(int(args["--drop-to"]))
    fix_hard_limits(int(args.get("--cpu-budget", 3600)))
    sys.path[:0] = [os.path.dirname(os.path.abspath(__file__))] + [p for k, p in zip(argv[::2], argv[1::2])
                                                                    if k == "--path"]
    global graph_check, sandbox_protocol, torch
    import graph_check
    import sandbox_protocol
    import torch

    torch.set_num_threads(int(args.get("--threads", 1)))
    fix_memory_limit(int(args.get("--memory", 1 << 30)))
    Worker(0, write_fd).serve()


if __name__ == "__main__":
    main(sys.argv[1:])
