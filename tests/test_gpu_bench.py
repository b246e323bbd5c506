"""benchmarks/gpu.py, the CUDA-against-CPU check, in its CPU self-check mode at tiny sizes: every
comparison runs through the same code as on a GPU, so the script cannot rot on machines without one."""
import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

_path = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu.py"
_spec = importlib.util.spec_from_file_location("gpu_bench", _path)
gpu = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = gpu  # dataclasses look their module up while the file runs
_spec.loader.exec_module(gpu)


@pytest.fixture(autouse=True)
def _private_store(tmp_path, monkeypatch):
    monkeypatch.setenv("REPLENS_STORE", str(tmp_path / "store"))


@pytest.mark.parametrize("name", list(gpu.CHECKS))
def test_each_check_agrees_with_itself_on_the_cpu(name):
    lines = []
    results = gpu.run_checks("cpu", gpu.Sizes.small(), repeats=0, only=[name], report=lines.append)
    assert results and len(lines) == len(results)
    for c in results:
        # the same computation twice on one CPU: well inside every tolerance, and rates were measured
        assert c.passed, gpu._line(c)
        assert c.error <= c.tol / 10
        assert c.rate_cpu > 0 and c.rate_dev > 0 and math.isfinite(c.ratio)
    if name == "vector_field":  # some trajectories converge at this size, so the comparisons see something
        notes = {c.name.split(" (")[0]: c.notes[0] for c in results}
        assert not notes["vector field convergence"].startswith("converged cpu 0.000")
        assert not notes["vector field attractors"].startswith("0 attractors")


def test_errors_and_verdicts():
    a = np.arange(12.0).reshape(3, 4)
    assert gpu.relative_error(a, a) == 0
    assert gpu.relative_error(a * (1 + 1e-3), a) == pytest.approx(1e-3)
    assert gpu.relative_error(a[:2], a) == math.inf  # shapes differ: never a pass
    assert gpu.max_abs_error(a + 0.5, a) == pytest.approx(0.5)
    b = a.copy()
    b[0, 0] = np.nan
    assert gpu.max_abs_error(b, b) == 0.0  # NaN where both are NaN (constant layers) is agreement
    assert gpu.max_abs_error(b, a) == math.inf  # NaN on one side only is not
    check = gpu.Check("x", error=2e-4, tol=1e-4, unit="items/s", rate_cpu=10.0, rate_dev=40.0)
    assert not check.passed and check.ratio == 4.0
    assert not gpu.Check("x", float("nan"), 1.0, "items/s", 1.0, 1.0).passed
    assert gpu.float32_tol(torch.device("cpu"), conv=True) == (gpu.FLOAT32_TOL, "float32")


def test_without_cuda_the_script_skips(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert gpu.main(["--device", "cuda"]) == 0
    assert "skipped" in capsys.readouterr().out
