"""Uploaded TorchScript never touches the server: the operator allowlist, the bubblewrap sandbox,
the proxy model, the settings that switch code uploads off, and the plain-data protocol.

Hostile files (tests/hostile_scripts.py) read /etc/passwd and a secret file, create and overwrite
files through ``aten::from_file(shared=True)`` (also from a ``__setstate__`` that torch.jit.load
itself runs), print, seed the RNG, loop for ever and allocate 3.2 GB. Each is refused with a
message, leaves every marker file as it was and the store empty, and nothing it read reaches the
message. Benign files (an MLP, an autoencoder with exported encode/decode) give the same numbers
through the sandbox as run directly, including the vector field's iteration and Jacobians.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from analysis import activations, data, evaluate, models, settings
from analysis import vector_field as vf
from analysis.errors import UserInputError
from analysis.models import graph_check, sandbox, sandbox_protocol
from analysis.store import Store

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests import hostile_scripts as H  # noqa: E402

FAST = sandbox.Limits(cpu_s=3, memory=1 << 30, wall_s=60)


@pytest.fixture
def fast_probe(monkeypatch):
    """A 3 s CPU budget for the upload check, so the looping model is stopped quickly."""
    monkeypatch.setattr(sandbox, "PROBE", FAST)


@pytest.fixture
def markers(tmp_path):
    """A secret file, a file a model will try to overwrite, and a path it will try to create."""
    secret = tmp_path / "secret.txt"
    secret.write_text("SECRET-7f3a9c-do-not-leak\n" * 4)
    existing = tmp_path / "existing.txt"
    existing.write_bytes(b"original content, 64 bytes long........................ end\n")
    in_tmp = Path("/tmp") / f"replens-sandbox-marker-{os.getpid()}-{tmp_path.name}"
    yield {"secret": secret, "existing": existing, "created": tmp_path / "created.bin", "in_tmp": in_tmp}
    in_tmp.unlink(missing_ok=True)


def _state(markers) -> dict:
    return {k: (p.read_bytes() if p.exists() else None) for k, p in markers.items()}


def _passwd_lines() -> list[str]:
    lines = [ln for ln in Path("/etc/passwd").read_text().splitlines() if ln.strip()]
    assert lines  # the test would prove nothing without them
    return lines


HOSTILE = [  # (what it does, the module given the marker paths, the operator the message names)
    ("reads /etc/passwd", lambda m: H.ReadFile("/etc/passwd", min(Path("/etc/passwd").stat().st_size, 64)),
     "aten::from_file"),
    ("reads a secret", lambda m: H.ReadFile(str(m["secret"]), 64), "aten::from_file"),
    ("creates a file", lambda m: H.WriteFile(str(m["created"])), "aten::from_file"),
    ("overwrites a file", lambda m: H.WriteFile(str(m["existing"])), "aten::from_file"),
    # torch.jit.load runs __setstate__: inside the sandbox, where the server's files are not there
    ("__setstate__ overwrites a file", lambda m: H.OpensOnLoad(str(m["existing"])), "fails while loading"),
    ("__setstate__ creates a file", lambda m: H.OpensOnLoad(str(m["created"])), "fails while loading"),
    # ... and where its own scratch folder is: the load succeeds there, then the check refuses it
    ("__setstate__ writes to /tmp", lambda m: H.OpensOnLoad(str(m["in_tmp"])), "aten::from_file"),
    ("prints", lambda m: H.Prints(), "prim::Print"),
    ("seeds the RNG", lambda m: H.Seeds(), "aten::manual_seed"),
]


# ------------------------------------------------------------------ the static check
def test_allowlist_refuses_io_seeding_and_unknown_namespaces():
    assert graph_check.refused(["aten::linear", "aten::relu_", "prim::Loop", "prim::If", "aten::add_"]) == []
    bad = ["aten::from_file", "aten::save", "prim::Print", "aten::manual_seed", "aten::set_", "aten::resize_",
           "aten::_load_for_mobile", "myops::evil", "prim::PythonOp", "aten::empty", "aten::fork"]
    assert graph_check.refused(bad) == sorted(bad)
    assert graph_check.refused(["aten.linear.default", "aten.relu.default"]) == []  # torch.export names
    assert graph_check.refused(["aten.from_file.default"]) == ["aten::from_file"]


def test_every_allowed_operator_exists():
    """A typo in the allowlist would silently refuse a real operator."""
    known = {s.name for s in torch._C._jit_get_all_schemas()}
    nodes = {"prim::Constant", "prim::GetAttr", "prim::SetAttr", "prim::If", "prim::Loop", "prim::CallFunction",
             "prim::CallMethod", "prim::ListConstruct", "prim::ListUnpack", "prim::TupleConstruct",
             "prim::DictConstruct", "prim::unchecked_cast", "prim::isinstance", "prim::CreateObject"}
    assert sorted(graph_check.ALLOWED - known - nodes) == []


@pytest.mark.parametrize("build", [
    lambda: torch.nn.Sequential(torch.nn.Unflatten(1, (1, 8, 8)), torch.nn.Conv2d(1, 4, 3, padding=1),
                                torch.nn.BatchNorm2d(4), torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Flatten(),
                                torch.nn.Linear(64, 10)),
    lambda: torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.LayerNorm(32), torch.nn.GELU(),
                                torch.nn.Dropout(0.1), torch.nn.Linear(32, 10), torch.nn.LogSoftmax(-1)),
    lambda: torch.nn.Sequential(torch.nn.Unflatten(1, (8, 8)),
                                torch.nn.TransformerEncoderLayer(8, 2, 16, batch_first=True), torch.nn.Flatten()),
], ids=["cnn-batchnorm", "layernorm-gelu", "transformer-layer"])
def test_standard_modules_pass_the_check(build):
    module = torch.jit.script(build().eval())
    ops = graph_check.script_operators(module)
    assert "aten::linear" in ops and graph_check.refused(ops) == []


def test_check_walks_nested_blocks_and_the_methods_of_scripted_classes():
    found = _operators_after_load(H.save(H.UsesRestored()))
    assert "aten::atan" in found and found["aten::atan"].endswith("Restored.__setstate__")
    assert "prim::Print" in _operators_after_load(H.save(H.Prints()))
    assert "aten::tanh" in graph_check.script_operators(torch.jit.script(H.SlowOnRequest()))  # in the loop
    assert {"aten::tanh", "aten::sigmoid"} <= set(graph_check.script_operators(torch.jit.script(H.exported_ae())))


def _operators_after_load(blob: bytes) -> dict:
    """What the worker finds, computed here on a benign file only (never load a hostile one here)."""
    from torch.jit._recursive import wrap_cpp_module

    unit = torch._C.CompilationUnit()
    module = wrap_cpp_module(torch._C.import_ir_module_from_buffer(unit, blob, torch.device("cpu"), {}, False))
    return graph_check.script_operators(module, unit.get_functions())


# ------------------------------------------------------------------ hostile files through the library
@pytest.mark.parametrize("case", HOSTILE, ids=[c[0] for c in HOSTILE])
def test_hostile_torchscript_is_refused_and_touches_nothing(case, markers, isolated_store):
    _, build, operator = case
    blob = H.save(build(markers))
    before = _state(markers)
    with pytest.raises(UserInputError) as err:
        models.upload(blob, "evil.pt")
    message = str(err.value)
    assert operator in message and message.startswith("evil.pt")
    assert _state(markers) == before  # nothing created, nothing overwritten
    assert "SECRET-7f3a9c" not in message
    assert not any(line in message for line in _passwd_lines())
    assert Store(isolated_store).blobs() == []


def test_setstate_text_never_leaves_the_sandbox(isolated_store):
    with pytest.raises(UserInputError, match="not a TorchScript file") as err:
        models.upload(H.save(H.RaisesOnLoad("SECRET-7f3a9c")), "raises.pt")
    assert "SECRET" not in str(err.value) and "leaked" not in str(err.value)
    assert Store(isolated_store).blobs() == []


def test_a_looping_model_is_stopped_by_its_cpu_limit(fast_probe, isolated_store):
    start = time.monotonic()
    with pytest.raises(UserInputError, match=r"ran past its 3 s (CPU|time) limit") as err:
        models.upload(H.save(H.Loops()), "loops.pt")
    assert "the upload check" in str(err.value)
    assert time.monotonic() - start < 60
    assert Store(isolated_store).blobs() == []


def test_a_model_that_allocates_gigabytes_is_refused(fast_probe, isolated_store):
    with pytest.raises(UserInputError, match=r"needed more than 1 GB during the upload check"):
        models.upload(H.save(H.Allocates()), "big.pt")
    assert Store(isolated_store).blobs() == []


# ------------------------------------------------------------------ benign files through the proxy
def test_benign_mlp_gives_the_same_outputs_through_the_sandbox():
    net = H.mlp()
    m = models.load(models.upload(H.save(net), "mlp.pt"))
    assert isinstance(m, models.torch_models.SandboxedScriptModel)
    assert m.module is None and m.layers == ["output"] and m.kind == "classifier" and m.n_inputs == 64
    assert m.num_parameters() == sum(p.numel() for p in net.parameters())
    ds = data.load("digits", n=40)
    out = activations.extract(m, ds)["output"]
    with torch.no_grad():
        np.testing.assert_allclose(out, net(torch.from_numpy(ds.inputs)).numpy(), rtol=1e-5, atol=1e-6)
    ev = evaluate.evaluate(m, ds)
    assert ev.metric == "accuracy" and ev.predictions.shape == (40,)
    with pytest.raises(UserInputError, match="is TorchScript"):
        from analysis import lrp

        lrp.check_model(m)


def test_benign_autoencoder_with_exported_encode_decode(isolated_store):
    ae = H.exported_ae()
    m = models.load(models.upload(H.save(ae), "ae.pt"))
    assert m.kind == "autoencoder" and m.is_autoencoder and m.latent_shape == [2]
    x = torch.from_numpy(data.load("digits", n=20).inputs)
    with torch.no_grad():
        z_ref = ae.encode(x)
        np.testing.assert_allclose(m.encode(x).numpy(), z_ref.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(m.decode(z_ref).numpy(), ae.decode(z_ref).numpy(), rtol=1e-5, atol=1e-6)
    ev = evaluate.evaluate(m, data.load("digits", n=20))
    with torch.no_grad():
        np.testing.assert_allclose(ev.reconstructions, ae(x).numpy(), rtol=1e-5, atol=1e-6)

    # the vector field's library path: iterate, attractors and Jacobians through the sandbox
    z0 = z_ref[:8]
    got = vf.iterate(m.encode, m.decode, z0, max_steps=60, tol=1e-8)
    ref = vf.iterate(ae.encode, ae.decode, z0, max_steps=60, tol=1e-8)
    np.testing.assert_allclose(got.endpoints, ref.endpoints, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(got.steps, ref.steps)
    jac = vf.jacobians(m.encode, m.decode, z0)
    jac_ref = vf.jacobians(ae.encode, ae.decode, z0)
    np.testing.assert_allclose(jac, jac_ref, rtol=1e-4, atol=1e-5)
    with vf.latent_access(m) as (enc, dec):
        np.testing.assert_allclose(vf.map_rows(dec, z_ref.numpy()), ae.decode(z_ref).detach().numpy(),
                                   rtol=1e-5, atol=1e-6)


def test_a_worker_killed_mid_call_is_restarted_with_a_clear_error():
    net = H.SlowOnRequest()
    m = models.load(models.upload(H.save(net), "slow.pt"))
    worker = m.worker
    x = np.zeros((2, 64), np.float32)
    first_pid = worker.pid
    slow = x.copy()
    slow[0, 0] = 10 ** 9
    errors = []

    def long_call():
        try:
            worker.call("forward", slow)
        except UserInputError as exc:
            errors.append(str(exc))

    t = threading.Thread(target=long_call)
    t.start()
    time.sleep(1.0)
    os.kill(first_pid, signal.SIGKILL)  # bwrap; the sandbox goes with it
    t.join(60)
    assert not t.is_alive()
    assert len(errors) == 1 and "stopped unexpectedly" in errors[0] and "next request starts a new sandbox" in errors[0]
    out = m.run(models.Batch(torch.from_numpy(x)))  # a new worker, the model loaded and checked again
    assert worker.pid != first_pid and worker.alive
    with torch.no_grad():
        np.testing.assert_allclose(out.numpy(), net(torch.from_numpy(x)).numpy(), atol=1e-6)


def test_calls_from_several_threads_are_serialised_and_each_gets_its_own_rows():
    net = H.mlp(2)
    m = models.load(models.upload(H.save(net), "mlp.pt"))
    inputs = [torch.full((3 + i, 64), float(i)) for i in range(6)]
    outputs = [None] * len(inputs)

    def run(i):
        outputs[i] = m.run(models.Batch(inputs[i]))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    with torch.no_grad():
        for x, out in zip(inputs, outputs):
            np.testing.assert_allclose(out.numpy(), net(x).numpy(), atol=1e-6)


def test_idle_worker_stops_and_comes_back(monkeypatch):
    monkeypatch.setattr(sandbox, "IDLE_S", 1.0)
    net = H.mlp(1)
    m = models.load(models.upload(H.save(net), "mlp.pt"))
    x = torch.zeros(3, 64)
    for _ in range(5):  # calls keep it alive: one timer, pushed back by each call
        m.run(models.Batch(x))
        time.sleep(0.3)
    assert m.worker.alive
    deadline = time.monotonic() + 30
    while m.worker.alive and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not m.worker.alive
    with torch.no_grad():
        np.testing.assert_allclose(m.run(models.Batch(x)).numpy(), net(x).numpy(), atol=1e-6)


def test_dropping_the_model_stops_its_worker():
    m = models.load(models.upload(H.save(H.mlp()), "mlp.pt"))
    bwrap_pid = m.worker.pid
    del m
    import gc

    gc.collect()
    with pytest.raises(ProcessLookupError):
        for _ in range(100):
            os.kill(bwrap_pid, 0)
            time.sleep(0.1)


# ------------------------------------------------------------------ the sandbox itself
SANDBOX_PROBE = r"""
import errno, json, os, socket, sys
sys.path.insert(0, "/replens")
import sandbox_worker
if os.getuid() == 0:
    sandbox_worker.drop_privileges(sandbox_worker.NOBODY)
out = {"uid": os.getuid(), "euid": os.geteuid(), "caps": sandbox_worker._capabilities()}
out["etc"] = sorted(os.listdir("/etc"))
out["top"] = sorted(os.listdir("/"))
def attempt(fn):
    try:
        fn()
        return "allowed"
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))
out["write_usr"] = attempt(lambda: open("/usr/replens-test", "w"))
out["write_tmp"] = attempt(lambda: open("/tmp/scratch", "w").write("ok"))
out["socket"] = attempt(lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
def unshare_user():
    if libc.unshare(0x10000000) != 0:  # CLONE_NEWUSER
        raise OSError(ctypes.get_errno(), "unshare")
out["unshare"] = attempt(unshare_user)
out["processes"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
out["host_file_visible"] = os.path.exists(sys.argv[1])
print(json.dumps(out))
"""


def test_the_sandbox_is_unprivileged_read_only_and_offline(markers):
    fd = sandbox._seccomp_fd()
    cmd = sandbox.command(fd, 1 << 30)
    program = cmd.index(os.path.realpath(sys.executable))
    cmd = cmd[:program] + [os.path.realpath(sys.executable), "-I", "-c", SANDBOX_PROBE,
                                   str(markers["secret"])]
    try:
        r = subprocess.run(cmd, pass_fds=(fd,), capture_output=True, text=True, timeout=120)
    finally:
        os.close(fd)
    assert r.returncode == 0, r.stderr
    import json

    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["uid"] == out["euid"] == sandbox.NOBODY and out["caps"] == 0
    assert out["etc"] == ["ld.so.cache"]  # no passwd, no secrets: /etc is not there
    assert not out["host_file_visible"]  # the host's /tmp is not the sandbox's scratch
    assert out["write_usr"] in ("EROFS", "EACCES") and out["write_tmp"] == "allowed"
    assert out["socket"] in ("EPERM", "EACCES") and out["unshare"] == "EPERM"
    assert len(out["processes"]) <= 3  # its own PID namespace: bwrap's init and itself


def test_without_bubblewrap_code_uploads_are_refused_for_the_admin(monkeypatch, isolated_store):
    monkeypatch.setattr(sandbox, "BWRAP", "/nonexistent/bwrap")
    with pytest.raises(sandbox.SandboxUnavailable, match="bubblewrap is not installed") as err:
        models.upload(H.save(H.mlp()), "mlp.pt")
    assert "REPLENS_CODE_UPLOADS=off" in str(err.value) and "apt-get install bubblewrap" in str(err.value)
    monkeypatch.setattr(sandbox, "BWRAP", "/bin/false")  # installed but cannot start
    with pytest.raises(sandbox.SandboxUnavailable, match="the sandbox did not start"):
        models.upload(H.save(H.mlp()), "mlp.pt")
    assert Store(isolated_store).blobs() == []


# ------------------------------------------------------------------ the settings
def test_code_upload_setting(monkeypatch, isolated_store):
    monkeypatch.delenv(settings.CODE_UPLOADS_ENV, raising=False)
    monkeypatch.delenv(settings.SHARED_SERVER_ENV, raising=False)
    assert settings.code_uploads() and not settings.shared_server()
    monkeypatch.setenv(settings.SHARED_SERVER_ENV, "1")
    assert not settings.code_uploads()
    with pytest.raises(UserInputError, match="does not run uploaded programs") as err:
        models.upload(H.save(H.mlp()), "mlp.pt")
    assert "the default on a shared server" in str(err.value) and "REPLENS_CODE_UPLOADS=on" in str(err.value)
    assert Store(isolated_store).blobs() == []
    monkeypatch.setenv(settings.CODE_UPLOADS_ENV, "on")
    assert settings.code_uploads()
    ref = models.upload(H.save(H.mlp()), "mlp.pt")
    monkeypatch.setenv(settings.CODE_UPLOADS_ENV, "off")
    with pytest.raises(UserInputError, match="does not run uploaded programs"):
        models.load(ref)  # turned off later: a stored upload is not run either
    monkeypatch.setenv(settings.CODE_UPLOADS_ENV, "maybe")  # unrecognised: off
    assert not settings.code_uploads()
    # weights and embeddings are data, not programs: still accepted
    from analysis import zoo

    models.upload((zoo.ZOO_DIR / models.zoo_entry("mlp-s0")["file"]).read_bytes(), "w.safetensors")


# ------------------------------------------------------------------ the protocol reads plain data only
def _reader(blob: bytes):
    pos = [0]

    def read_exact(n):
        chunk = blob[pos[0]: pos[0] + n]
        if len(chunk) < n:
            raise EOFError
        pos[0] += n
        return chunk

    return read_exact


def test_protocol_round_trip_and_refusals():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    header, arrays = sandbox_protocol.read_message(_reader(sandbox_protocol.encode({"ok": True}, [x])), 1 << 20)
    assert header["ok"] is True and np.array_equal(arrays[0], x)
    obj = np.array([{"a": 1}], dtype=object)
    import io

    buf = io.BytesIO()
    np.save(buf, obj, allow_pickle=True)
    with pytest.raises(sandbox_protocol.ProtocolError, match="only plain numbers"):
        sandbox_protocol.decode_array(buf.getvalue())
    lying = sandbox_protocol.npy_bytes(np.zeros(4, np.float32)).replace(b"(4,)", b"(10000000000,)")
    with pytest.raises(sandbox_protocol.ProtocolError, match="does not match"):
        sandbox_protocol.decode_array(lying)
    buf = io.BytesIO()
    np.savez(buf, a=x)
    with pytest.raises(sandbox_protocol.ProtocolError, match="not an npy array"):
        sandbox_protocol.decode_array(buf.getvalue())
    with pytest.raises(sandbox_protocol.ProtocolError, match="over the limit"):
        sandbox_protocol.read_message(_reader(sandbox_protocol.encode({}, [np.zeros(1000)])), 100)
    with pytest.raises(sandbox_protocol.ProtocolError, match="not a JSON object"):
        sandbox_protocol.read_message(_reader(sandbox_protocol.frame(b"[1, 2]")), 100)
