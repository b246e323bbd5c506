"""Uploaded TorchScript runs in a sandboxed worker process, never in the server.

Why a sandbox, and which
------------------------
A TorchScript file is a program: ``torch.jit.load`` already runs the ``__setstate__`` methods of
the scripted classes in it, ``aten::from_file`` maps any readable file (and with ``shared=True``
creates or overwrites one), loops and allocations burn CPU and memory. Two layers stand between an
upload and the server:

1. the operator allowlist (:mod:`analysis.models.graph_check`), checked inside the worker right
   after loading and before any method runs, and checked again here on the operator list that
   comes back;
2. the worker process itself, launched through Debian's **bubblewrap** (``bwrap``): new mount, PID,
   network, IPC and UTS namespaces; a root filesystem that holds only ``/usr``, the Python
   installation and the worker's two source files, all read-only (no ``/etc``, no home, no result
   store: there is nothing of the server's to read), a 64 MB tmpfs as scratch, no network; an
   unprivileged user; ``RLIMIT_CPU`` / ``RLIMIT_AS`` per request, ``RLIMIT_FSIZE`` /
   ``RLIMIT_NPROC`` / ``RLIMIT_NOFILE`` / no core files for its life, and a wall-clock deadline
   that the server enforces by killing it.

bubblewrap rather than a home-made namespace setup: it is the small, audited tool Flatpak uses, and
Debian ships it. The user: a server running as root starts bwrap without a user namespace (a user
namespace would map the sandbox's user back to root, who owns every root file it can see) and the
worker drops to ``nobody`` (65534) for good before it reads the model, so no capability is left; a
server running as an ordinary user gets an unprivileged user namespace (``--unshare-user
--disable-userns``), already without privileges. A **seccomp** filter is added (built with
libseccomp through ``pyseccomp``): namespaces, the parent's view and the filesystem are already
closed, but the kernel's own attack surface is not, and a few system calls carry most kernel
exploits (new user namespaces, ``bpf``, ``userfaultfd``, ``io_uring``, ``perf_event_open``,
``keyctl``, ``ptrace``, mounts, sockets); a worker has no use for any of them, so they fail with
EPERM.

Nothing comes back but plain data: JSON headers and ``.npy`` arrays checked before they are built
(:mod:`analysis.models.sandbox_protocol`); no pickle in either direction. Error text from the load
(before the check) never comes back; error text from a checked model's methods comes back as one
line, shown inert.

Without bwrap (or libseccomp), or when it cannot start (user namespaces disabled, a container that
forbids ``unshare``), uploads of code are refused with a message for the admin: never run
unsandboxed.

One worker per loaded model stays alive between calls (starting Python + torch takes 1-2 s), calls
are serialised by a lock, an idle worker is stopped after :data:`IDLE_S` seconds and when its model
is dropped, and a worker that died is started again (and the model loaded and checked again) on the
next call.
"""
from __future__ import annotations

import errno
import functools
import importlib.util
import logging
import os
import re
import select
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserInputError
from . import graph_check, sandbox_protocol
from .sandbox_protocol import ProtocolError

log = logging.getLogger("replens")

BWRAP = "/usr/bin/bwrap"
NOBODY = 65534
HERE = Path(__file__).resolve().parent
INSIDE = "/replens"  # where the worker's source files are bound inside the sandbox
WORKER_FILES = ("sandbox_worker.py", "sandbox_protocol.py", "graph_check.py", "export_check.py")
SCRATCH_BYTES = 64 << 20
START_S = 120.0  # importing torch on a loaded machine
IDLE_S = 300.0
CPU_BUDGET_S = 3600  # a worker's whole life; it is replaced before a call could run past it


@dataclass(frozen=True)
class Limits:
    """What one request may use inside the sandbox."""

    cpu_s: float
    memory: int  # bytes of address space on top of what the worker already has
    wall_s: float


PROBE = Limits(cpu_s=10, memory=1 << 30, wall_s=30)  # loading, checking and the upload probe
RUN_MEMORY_CAP = 8 << 30
REPLY_BYTES = 1 << 30  # the most one array coming back may hold (the server reads it whole)
_LAYER = re.compile(r"[A-Za-z0-9_]{1,100}(\.[A-Za-z0-9_]{1,100}){0,20}")  # a submodule name from the sandbox


def run_limits() -> Limits:
    """One batch, one encode/decode, one set of Jacobians: 300 s of CPU, 8 GB or the memory one
    computation may plan for on this machine (analysis.resources), whichever is less."""
    from ..resources import USABLE_FRACTION, available_bytes

    return Limits(cpu_s=300, memory=int(min(RUN_MEMORY_CAP, available_bytes() * USABLE_FRACTION)), wall_s=600)


class SandboxUnavailable(UserInputError):
    """This server cannot sandbox uploaded code; the message says what the admin can do."""


def _admin_message(reason: str) -> str:
    return (f"This server cannot run uploaded TorchScript safely: {reason}. Uploaded TorchScript only "
            "runs inside a bubblewrap sandbox, never in the server itself. The server's admin can install "
            "bubblewrap and libseccomp (apt-get install bubblewrap libseccomp2) and allow user namespaces, "
            "or set REPLENS_CODE_UPLOADS=off to refuse such uploads up front. Safetensors weights of a zoo "
            "architecture and embeddings files do not need it.")


def inert(text: str, limit: int = 300) -> str:
    """Untrusted one-line text as a markdown code span (no links, images or HTML survive)."""
    line = " ".join(str(text).split())[:limit]
    return "`" + line.replace("`", "'") + "`"


# --------------------------------------------------------------------------- the command line
def _site_dirs() -> list[str]:
    """The site-packages folders that hold numpy and torch (the worker runs ``python -I``)."""
    dirs = []
    for name in ("numpy", "torch"):
        spec = importlib.util.find_spec(name)
        if spec and spec.origin:
            dirs.append(os.path.dirname(os.path.dirname(os.path.realpath(spec.origin))))
    return sorted(set(dirs))


def _runtime_dirs() -> list[str]:
    """Folders the worker's Python needs outside /usr: the interpreter's prefixes and the site
    folders of numpy and torch, without folders inside others."""
    dirs = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix)}
    dirs = sorted(d for d in dirs | set(_site_dirs()) if not (d == "/usr" or d.startswith("/usr/")))
    return [d for d in dirs if not any(d != o and d.startswith(o.rstrip("/") + "/") for o in dirs)]


def _filesystem_args() -> list[str]:
    binds = [("/usr", "/usr")] + [(d, d) for d in _runtime_dirs()]
    binds += [(str(HERE / f), f"{INSIDE}/{f}") for f in WORKER_FILES]
    # Folders bwrap creates for mount points are root's and 0700: readable ones for the worker.
    parents = sorted({str(p) for _, dest in binds for p in Path(dest).parents if str(p) != "/"} | {"/etc"})
    args = [a for p in parents for a in ("--perms", "0755", "--dir", p)]
    for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        path = f"/{name}"
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            binds.append((path, path))
    binds.append(("/etc/ld.so.cache", "/etc/ld.so.cache"))
    for src, dest in binds:
        args += ["--ro-bind-try" if src.startswith("/etc/") else "--ro-bind", src, dest]
    return args + ["--proc", "/proc", "--dev", "/dev", "--perms", "1777", "--size", str(SCRATCH_BYTES),
                   "--tmpfs", "/tmp", "--chdir", "/tmp"]


def _user_args(as_root: bool) -> list[str]:
    if as_root:  # no user namespace: the worker itself becomes nobody (see the module docstring)
        return ["--cap-drop", "ALL", "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    return ["--unshare-user", "--uid", str(NOBODY), "--gid", str(NOBODY), "--disable-userns"]


def threads() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def command(seccomp_fd: int, memory: int) -> list[str]:
    """The bwrap command line that starts one worker."""
    as_root = os.geteuid() == 0
    # OMP_WAIT_POLICY: idle OpenMP threads sleep instead of spinning (spinning made each small call
    # 30x slower on a busy 2-core machine)
    env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8", "MALLOC_ARENA_MAX": "2",
           "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": str(threads()), "MKL_NUM_THREADS": str(threads())}
    worker = [os.path.realpath(sys.executable), "-I", "-B", f"{INSIDE}/sandbox_worker.py",
              "--threads", str(threads()), "--cpu-budget", str(CPU_BUDGET_S), "--memory", str(memory)]
    if as_root:
        worker += ["--drop-to", str(NOBODY)]
    for d in _site_dirs():
        worker += ["--path", d]
    return [BWRAP, "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try",
            *_user_args(as_root), "--die-with-parent", "--new-session", "--hostname", "sandbox", "--clearenv",
            *[a for k, v in env.items() for a in ("--setenv", k, v)], *_filesystem_args(),
            "--seccomp", str(seccomp_fd), *worker]


# --------------------------------------------------------------------------- seccomp
DENIED_SYSCALLS = (
    "unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree", "fsopen",
    "fsconfig", "fsmount", "fspick", "mount_setattr", "ptrace", "process_vm_readv", "process_vm_writev",
    "kcmp", "bpf", "perf_event_open", "userfaultfd", "keyctl", "add_key", "request_key", "io_uring_setup",
    "io_uring_enter", "io_uring_register", "kexec_load", "kexec_file_load", "init_module", "finit_module",
    "delete_module", "reboot", "swapon", "swapoff", "acct", "quotactl", "settimeofday", "clock_settime",
    "clock_adjtime", "adjtimex", "socket", "socketpair", "name_to_handle_at", "open_by_handle_at",
    "lookup_dcookie", "vhangup", "syslog", "personality", "uselib",
)
CLONE_NAMESPACES = (0x10000000, 0x00020000, 0x04000000, 0x08000000, 0x20000000, 0x40000000, 0x02000000,
                    0x00000080)  # NEWUSER NEWNS NEWUTS NEWIPC NEWPID NEWNET NEWCGROUP NEWTIME


@functools.lru_cache(maxsize=1)
def seccomp_program() -> bytes:
    """The compiled seccomp filter (BPF) that bwrap installs before it starts the worker."""
    try:
        import pyseccomp as sc
    except (ImportError, OSError) as exc:  # OSError: libseccomp.so.2 itself is missing
        raise SandboxUnavailable(_admin_message(f"libseccomp cannot be loaded ({type(exc).__name__})")) from exc
    f = sc.SyscallFilter(sc.ALLOW)
    for name in DENIED_SYSCALLS:
        try:
            f.add_rule(sc.ERRNO(errno.EPERM), name)
        except (ValueError, OSError):  # not a system call on this architecture
            continue
    for flag in CLONE_NAMESPACES:
        f.add_rule(sc.ERRNO(errno.EPERM), "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
    f.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")  # flags behind a pointer: glibc falls back to clone
    with tempfile.TemporaryFile() as tmp:
        f.export_bpf(tmp)
        tmp.seek(0)
        return tmp.read()


def _seccomp_fd() -> int:
    fd = os.memfd_create("replens-seccomp", 0)  # no CLOEXEC: bwrap reads it
    os.write(fd, seccomp_program())
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


# --------------------------------------------------------------------------- the pipe
class _Stopped(Exception):
    """The worker's pipe ended or its time ran out."""

    def __init__(self, timed_out: bool):
        self.timed_out = timed_out


class _Pipe:
    """Reads and writes on the worker's pipes that give up at a deadline."""

    def __init__(self, proc: subprocess.Popen):
        self.rfd, self.wfd = proc.stdout.fileno(), proc.stdin.fileno()
        os.set_blocking(self.wfd, False)
        self.deadline = 0.0

    def _wait(self, read: bool) -> None:
        left = self.deadline - time.monotonic()
        ready = select.select([self.rfd] if read else [], [] if read else [self.wfd], [], max(left, 0))
        if not any(ready):
            raise _Stopped(timed_out=True)

    def read_exact(self, n: int) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            self._wait(read=True)
            chunk = os.read(self.rfd, min(n - len(buf), 1 << 20))
            if not chunk:
                raise _Stopped(timed_out=False)
            buf += chunk
        return bytes(buf)

    def write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            self._wait(read=False)
            try:
                view = view[os.write(self.wfd, view):]
            except BlockingIOError:
                continue
            except BrokenPipeError:
                raise _Stopped(timed_out=False) from None


# --------------------------------------------------------------------------- one model's worker
class ModelWorker:
    """One uploaded TorchScript model, loaded and checked in its own sandboxed worker process.

    :meth:`open` starts the worker, loads the file, checks its operators and probes it (under
    :data:`PROBE`); :meth:`call` runs forward / encode / decode on a batch (under :func:`run_limits`).
    Errors a user can cause raise :class:`UserInputError` naming ``filename``.
    """

    def __init__(self, data: bytes, filename: str, idle_s: float | None = None, fmt: str = "torchscript"):
        self.data, self.filename, self.format = data, filename, fmt
        self.idle_s = IDLE_S if idle_s is None else idle_s
        self.operators: list[str] = []
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._pipe: _Pipe | None = None
        self._stderr = None
        self._cpu_used = 0.0
        self._last = time.monotonic()
        self._timer: threading.Timer | None = None
        self._run_limits = run_limits()

    # -- public
    def open(self) -> dict:
        """Start, load, check and probe; returns what the probe found (``n_inputs`` None when the
        model runs on no (2, d) input tried)."""
        with self._lock:
            self._start_and_load()
            header, _ = self._request({"op": "probe"}, [], PROBE, "the upload check")
        self._arm_idle_timer()
        return _checked_probe(header)

    def call(self, method: str, x: np.ndarray, jacobian: bool = False,
             limits: Limits | None = None, layers: list[str] | None = None) -> list[np.ndarray]:
        """``[output]`` (or ``[output, per-row Jacobian]``) of ``method`` on the rows of ``x``; with
        ``layers`` (torch.export models), ``[output, *outputs of those submodules]``."""
        x = np.ascontiguousarray(x)
        limits = limits or self._run_limits
        request = {"op": "call", "method": method, "jacobian": jacobian, **({"layers": layers} if layers else {})}
        with self._lock:
            if self._proc is None or self._proc.poll() is not None or self._cpu_used + limits.cpu_s > CPU_BUDGET_S:
                self._stop()
                self._start_and_load()
            header, arrays = self._request(request, [x], limits, f"{method}")
        self._arm_idle_timer()
        expected = 1 + (len(layers) if layers else 0) + (1 if jacobian else 0)
        if len(arrays) != expected or any(a.ndim < 1 or a.shape[0] != x.shape[0] for a in arrays):
            raise UserInputError(f"{self.filename}: {method} returned {len(arrays)} array(s) of shape "
                                 f"{arrays[0].shape if arrays else ()} for {x.shape[0]} input rows; RepLens "
                                 "needs one output row per input row.")
        return arrays

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The bwrap process (killing it ends the sandbox)."""
        return self._proc.pid if self._proc is not None else None

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        with self._lock:
            self._stop()

    # -- process
    def _start_and_load(self) -> None:
        self._start()
        from .. import tabular

        request = {"op": "load", "format": self.format, "max_unpacked": 4 * tabular.max_upload_bytes()}
        header, _ = self._request(request, [np.frombuffer(self.data, dtype=np.uint8)], PROBE, "loading")
        ops = header.get("operators")
        if not isinstance(ops, list) or not all(isinstance(o, str) and len(o) < 200 for o in ops):
            self._stop()
            raise UserInputError(f"{self.filename}: the sandbox sent back a malformed operator list; nothing was run.")
        self._refuse_if(self._refused(ops), {})
        self.operators = ops

    def _start(self) -> None:
        if not os.path.exists(BWRAP) or not os.access(BWRAP, os.X_OK):
            raise SandboxUnavailable(_admin_message(f"bubblewrap is not installed ({BWRAP} is missing)"))
        fd = _seccomp_fd()
        self._stderr = tempfile.TemporaryFile()
        try:
            self._proc = subprocess.Popen(command(fd, max(PROBE.memory, self._run_limits.memory)),
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
                                          pass_fds=(fd,), start_new_session=True)
        except OSError as exc:
            raise SandboxUnavailable(_admin_message(f"bwrap could not be started ({exc.strerror})")) from exc
        finally:
            os.close(fd)
        self._pipe = _Pipe(self._proc)
        self._pipe.deadline = time.monotonic() + START_S
        try:
            header, _ = sandbox_protocol.read_message(self._pipe.read_exact, 1 << 20)
        except (_Stopped, ProtocolError):
            header = {}
        if not header.get("ready") or header.get("uid") == 0:
            reason = self._stderr_tail() or f"the worker exited with status {self._proc.poll()}"
            self._stop()
            log.error("the model sandbox did not start: %s", reason)
            raise SandboxUnavailable(_admin_message(f"the sandbox did not start ({inert(reason)})"))
        self._cpu_used = 0.0

    def _stderr_tail(self) -> str:
        """The last line the sandbox wrote before it said ready (bwrap's or Python's own errors;
        no model was loaded yet)."""
        try:
            self._stderr.seek(max(self._stderr.seek(0, os.SEEK_END) - 2000, 0))
            lines = self._stderr.read().decode("utf-8", "replace").strip().splitlines()
        except (OSError, ValueError):
            return ""
        return lines[-1] if lines else ""

    def _stop(self) -> int | None:
        """Kill the worker (if any); returns its exit status."""
        proc, self._proc, self._pipe = self._proc, None, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.kill()  # bwrap; --die-with-parent takes the sandbox with it
        try:
            status = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            status = None
        for f in (proc.stdin, proc.stdout, self._stderr):
            try:
                f.close()
            except (OSError, AttributeError):
                pass
        return status

    def _arm_idle_timer(self, delay: float | None = None) -> None:
        """Note the last use; one timer at a time checks for idleness (not one per call)."""
        if delay is None:
            self._last = time.monotonic()
            if self._timer is not None and self._timer.is_alive():
                return
        self._timer = threading.Timer(self.idle_s if delay is None else delay, self._stop_if_idle)
        self._timer.daemon = True
        self._timer.start()

    def _stop_if_idle(self) -> None:
        with self._lock:
            if self._proc is None:
                return
            idle = time.monotonic() - self._last
            if idle < self.idle_s:
                self._arm_idle_timer(self.idle_s - idle)
            else:
                self._stop()

    # -- requests
    def _request(self, header: dict, arrays: list, limits: Limits, what: str):
        header = {**header, "limits": {"cpu_s": limits.cpu_s, "memory": limits.memory}}
        self._pipe.deadline = time.monotonic() + limits.wall_s
        try:
            self._pipe.write_all(sandbox_protocol.encode(header, arrays))
            reply, out = sandbox_protocol.read_message(self._pipe.read_exact, min(limits.memory, REPLY_BYTES))
        except _Stopped as stop:
            status = self._stop()
            raise UserInputError(self._death_message(what, limits, stop.timed_out, status)) from None
        except ProtocolError as exc:
            self._stop()
            log.warning("model sandbox sent a malformed reply: %s", exc)
            raise UserInputError(f"{self.filename}: the sandboxed model sent back a malformed reply during "
                                 f"{what}; it was stopped.") from None
        used = reply.get("cpu_used")
        if isinstance(used, (int, float)):
            self._cpu_used = float(used)
        if reply.get("ok") is True:
            return reply, out
        raise self._failure(reply, what, limits)

    def _death_message(self, what: str, limits: Limits, timed_out: bool, status) -> str:
        if timed_out:
            why = f"ran past its {limits.wall_s:.0f} s time limit and was stopped"
        elif status is not None and status in (128 + 24, -24):  # SIGXCPU: the soft RLIMIT_CPU
            why = f"ran past its {limits.cpu_s:.0f} s CPU limit and was stopped"
        else:
            why = f"stopped unexpectedly (exit status {status}; killed, or out of memory)"
        return (f"{self.filename}: the sandboxed model {why} during {what}. Nothing was stored; the next "
                "request starts a new sandbox.")

    def _failure(self, reply: dict, what: str, limits: Limits) -> UserInputError:
        kind = reply.get("error")
        if kind == "refused":
            self._stop()
            pairs = reply.get("refused")
            pairs = pairs if isinstance(pairs, list) else []
            ops = [p[0] for p in pairs if isinstance(p, list) and len(p) == 2 and isinstance(p[0], str)]
            where = {p[0]: p[1] for p in pairs if isinstance(p, list) and len(p) == 2 and isinstance(p[1], str)}
            return self._refusal(self._refused(ops) or ["(unnamed operator)"], where)
        if kind == "load":
            self._stop()
            return UserInputError(
                f"{self.filename} is not a TorchScript file ({inert(reply.get('type', 'error'), 60)}), or it "
                "fails while loading. Save models with torch.jit.save(torch.jit.script(model), path) or "
                "torch.jit.trace; plain torch.save pickles are refused.")
        if kind == "memory":
            return UserInputError(f"{self.filename}: the model needed more than {limits.memory / 2**30:.0f} GB "
                                  f"during {what} and was refused that memory.")
        return UserInputError(f"{self.filename}: the model failed during {what} ({inert(reply.get('type', ''), 60)}: "
                              f"{inert(reply.get('message', ''))}).")

    def _refused(self, ops) -> list[str]:
        """The operators the allowlist refuses (exported graphs also use shape and control-flow operators)."""
        from . import export_check

        return export_check.refused(ops) if self.format == "pt2" else graph_check.refused(ops)

    def _refuse_if(self, refused: list[str], where: dict) -> None:
        if refused:
            self._stop()
            raise self._refusal(refused, where)

    def _refusal(self, refused: list[str], where: dict) -> UserInputError:
        first = refused[0]
        place = where.get(first)
        place = f" in {inert(place, 120)}" if place else ""
        more = f" (and {', '.join(inert(r, 60) for r in refused[1:5])})" if len(refused) > 1 else ""
        return UserInputError(
            f"{self.filename} uses the operator {inert(first, 80)}{place}{more}, which RepLens does not run: "
            "uploaded TorchScript and torch.export programs may only use numeric tensor operators (no files, "
            "printing, seeding or custom operators). Script, trace or export the model without it.")


def _checked_probe(header: dict) -> dict:
    """The probe's answer with every field checked (it comes from the sandbox)."""
    def dims(v):
        ok = isinstance(v, list) and len(v) <= 8 and all(isinstance(s, int) and 0 <= s < 2**31 for s in v)
        return v if ok else None

    n = header.get("n_inputs")
    params = header.get("parameters")
    layers = header.get("layers")
    layers = layers if isinstance(layers, list) and len(layers) <= 1000 and all(
        isinstance(l, str) and _LAYER.fullmatch(l) for l in layers) else []
    return {"n_inputs": n if isinstance(n, int) and 1 <= n <= 1 << 20 else None,
            "output_shape": dims(header.get("output_shape")), "latent_shape": dims(header.get("latent_shape")),
            "parameters": params if isinstance(params, int) and params >= 0 else 0, "layers": layers}

