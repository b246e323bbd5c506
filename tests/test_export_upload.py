"""torch.export (.pt2) uploads: hookable layers run in the sandbox, hostile archives refused
without running anything, and never unpickled (torch.export.load would unpickle them)."""
import io
import json
import pickle
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

from analysis import activations, data, models
from analysis.errors import UserInputError
from analysis.models import export_check

needs_sandbox = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.act, self.fc2 = torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


@pytest.fixture(scope="module")
def archive() -> bytes:
    ep = torch.export.export(Net().eval(), (torch.zeros(2, 64),),
                             dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=1 << 16)}})
    buf = io.BytesIO()
    torch.export.save(ep, buf)
    return buf.getvalue()


def _rewrite(data: bytes, edit) -> bytes:
    """A copy of the archive with members changed by ``edit(name, bytes) -> bytes | None`` (None drops it)."""
    src, out = zipfile.ZipFile(io.BytesIO(data)), io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            body = edit(info.filename, src.read(info))
            if body is not None:
                dst.writestr(info.filename, body)
        extra = edit("(new)", b"")
        if extra:
            dst.writestr(*extra)
    return out.getvalue()


class Exploit:
    """Unpickling this creates a file: the proof that something was unpickled."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _with_pickled_sample_inputs(data: bytes, marker) -> bytes:
    payload = pickle.dumps(Exploit(marker))
    return _rewrite(data, lambda n, b: payload if n.endswith("sample_inputs/model.pt") else (None if n == "(new)" else b))


def _with_operator(data: bytes, old: str, new: str) -> bytes:
    return _rewrite(data, lambda n, b: b.replace(old.encode(), new.encode()) if n.endswith("models/model.json")
                    else (None if n == "(new)" else b))


def test_torch_export_load_itself_would_unpickle_the_sample_inputs(archive, tmp_path):
    """Why RepLens never calls torch.export.load: on this archive it runs the pickle (in a child process)."""
    marker = tmp_path / "pwned-by-torch-export-load"
    path = tmp_path / "hostile.pt2"
    path.write_bytes(_with_pickled_sample_inputs(archive, marker))
    subprocess.run([sys.executable, "-c", f"import torch; torch.export.load({str(path)!r})"], capture_output=True,
                   timeout=300)
    assert marker.exists()


def test_replens_loads_the_same_archive_without_unpickling(archive, tmp_path):
    marker = tmp_path / "pwned-by-replens"
    module, ops = export_check.load_program(_with_pickled_sample_inputs(archive, marker), 1 << 30)
    assert not marker.exists()
    with torch.no_grad():
        x = torch.randn(3, 64)
        np.testing.assert_allclose(module(x).numpy(), Net().eval()(x).numpy(), atol=1e-6)
    assert {n for n, _ in module.named_modules() if n} >= {"fc1", "act", "fc2"}
    assert "aten::linear" in ops


@pytest.mark.parametrize("edit,reason", [
    (lambda a: _with_operator(a, "torch.ops.aten.relu.default", "torch.ops.aten.from_file.default"),
     "aten::from_file"),
    (lambda a: _with_operator(a, "torch.ops.aten.relu.default", "torch.ops.evil.spawn.default"), "evil::spawn"),
    (lambda a: _rewrite(a, lambda n, b: b.replace(b'"use_pickle": false', b'"use_pickle": true', 1)
                        if n.endswith("model_weights_config.json") else (None if n == "(new)" else b)), "pickle"),
    (lambda a: _rewrite(a, lambda n, b: ("net/data/aotinductor/model.so", b"\x7fELF") if n == "(new)" else b),
     "compiled code"),
    (lambda a: _rewrite(a, lambda n, b: None if n.endswith("model_weights_config.json") or n == "(new)" else b),
     "legacy"),
    (lambda a: b"PK\x03\x04 not really a zip", "not a torch.export archive"),
])
def test_hostile_archives_are_refused_before_any_worker_starts(archive, edit, reason, monkeypatch):
    from analysis.models import sandbox

    started = []
    monkeypatch.setattr(sandbox.ModelWorker, "open", lambda self: started.append(self) or {})
    with pytest.raises(UserInputError, match="refused without running anything") as err:
        models.upload(edit(archive), "hostile.pt2")
    assert reason in str(err.value) and not started


def test_static_check_agrees_with_the_loaded_graph(archive):
    static = export_check.check_archive(archive, 1 << 30)["operators"]
    _, loaded = export_check.load_program(archive, 1 << 30)
    assert {export_check.normalize(t) for t in static} == set(loaded)


@needs_sandbox
def test_an_uploaded_program_runs_in_the_sandbox_with_hookable_layers(archive):
    m = models.load(models.upload(archive, "net.pt2"))
    assert m.layers == ["fc1", "act", "fc2", "output"] and m.kind == "classifier" and m.n_inputs == 64
    ds = data.load("digits", n=20)
    acts = activations.extract(m, ds, batch_size=8)
    net = Net().eval()
    with torch.no_grad():
        x = torch.from_numpy(ds.inputs)
        np.testing.assert_allclose(acts["fc1"], net.fc1(x).numpy(), atol=1e-6)
        np.testing.assert_allclose(acts["output"], net(x).numpy(), atol=1e-6)


def test_code_uploads_off_refuses_pt2(archive, monkeypatch):
    monkeypatch.setenv("REPLENS_CODE_UPLOADS", "off")
    with pytest.raises(UserInputError, match="programs"):
        models.upload(archive, "net.pt2")


def test_normalize_names():
    assert export_check.normalize("torch.ops.aten.add.Tensor") == "aten::add"
    assert export_check.normalize("aten.add.Tensor") == "aten::add"
    assert export_check.normalize(torch.ops.aten.add.Tensor) == "aten::add"
    assert export_check.normalize("_operator.getitem") == "_operator::getitem"
    assert export_check.normalize(torch.ops.higher_order.cond) == "higher_order::cond"
    assert export_check.refused(["torch.ops.aten.from_file.default", "aten.linear.default"]) == ["aten::from_file"]
    assert json.dumps(sorted(export_check.EXPORT_ALLOWED))  # plain names
