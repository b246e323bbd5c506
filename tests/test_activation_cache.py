"""The chunked on-disk activation cache: resumable after a kill (bit for bit), float16/bfloat16
storage, chunks in any order, token rows, subsets read by chunk, memory that does not grow with n."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from analysis import activations, data, models
from analysis.activations import cache as cache_mod
from analysis.store import Store

ROOT = Path(__file__).resolve().parent.parent


def _run(script: str, store: Path, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "REPLENS_STORE": str(store), "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=env, capture_output=True, text=True,
                          timeout=600, check=False, cwd=ROOT)


EXTRACT = """
    import os, signal, sys
    from analysis import activations, data, models
    from analysis.activations import cache
    cache.CHUNK_BYTES = 4 * 128 * 256   # 256 rows of the widest layer per chunk: many chunks
    kill_after = KILL_AFTER
    seen = []
    def progress(f, msg):
        seen.append(f)
        if kill_after and len(seen) == kill_after:
            os.kill(os.getpid(), signal.SIGKILL)   # no cleanup, no finally: as a crash or the OOM killer
    m = models.load("zoo:cnn-s0")
    ds = data.load("digits_noisy", n=3000, seed=3)
    activations.extract_chunked(m, ds, ["net.conv1", "net.conv3", "net.logits"], batch_size=64,
                                dtype="DTYPE", progress=progress)
    print(len(seen))
"""


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_a_killed_extraction_resumes_and_equals_an_uninterrupted_one_bit_for_bit(tmp_path, dtype):
    script = EXTRACT.replace("DTYPE", dtype).replace("KILL_AFTER", "0")
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    full = _run(script, whole)
    assert full.returncode == 0, full.stderr
    batches = int(full.stdout.split()[-1])
    assert batches == 47  # 3000 rows / 64
    killed = _run(EXTRACT.replace("DTYPE", dtype).replace("KILL_AFTER", "20"), resumed)
    assert killed.returncode == -9  # SIGKILL: it really died half-way
    store = Store(resumed)
    m, ds = models.load("zoo:cnn-s0"), data.load("digits_noisy", n=3000, seed=3)
    partial = cache_mod.open_cache(store, activations.cache_key(m, ds, "net.conv3", "mean", dtype))
    assert partial is not None and 0 < len(partial.record.done) < partial.record.chunks
    again = _run(script, resumed)
    assert again.returncode == 0, again.stderr
    assert int(again.stdout.split()[-1]) < batches  # only the missing chunks ran
    ref = Store(whole)
    for layer in ("net.conv1", "net.conv3", "net.logits"):
        key = activations.cache_key(m, ds, layer, "mean", dtype)
        a, b = cache_mod.open_cache(ref, key), cache_mod.open_cache(store, key)
        assert a.complete and b.complete
        raw_a = cache_mod.to_storage(a.read(), dtype)
        raw_b = cache_mod.to_storage(b.read(), dtype)
        assert raw_a.tobytes() == raw_b.tobytes()


def test_storage_dtypes_round_trip():
    x = np.random.default_rng(0).normal(size=(50, 7)).astype(np.float32) * 100
    assert cache_mod.from_storage(cache_mod.to_storage(x, "float32"), "float32").tobytes() == x.tobytes()
    h = cache_mod.from_storage(cache_mod.to_storage(x, "float16"), "float16")
    np.testing.assert_allclose(h, x, rtol=2 ** -11)
    b = cache_mod.from_storage(cache_mod.to_storage(x, "bfloat16"), "bfloat16")
    np.testing.assert_allclose(b, x, rtol=2 ** -8)
    assert cache_mod.to_storage(x, "bfloat16").dtype == np.uint16
    # round to nearest even, as torch does: 1 + 2^-8 lies halfway between two bfloat16 values
    assert cache_mod.from_storage(cache_mod.to_storage(np.float32([1 + 2 ** -8]), "bfloat16"), "bfloat16")[0] == 1.0


def test_chunks_in_any_order_and_reads_by_chunk(isolated_store):
    store = Store(isolated_store)
    x = np.arange(10 * 3, dtype=np.float32).reshape(10, 3)
    c = cache_mod.create_cache(store, "ab" * 32, samples=10, width=3, dtype="float32", batch_size=2, rule="as is",
                               chunk_rows=4)
    assert c.record.chunks == 3 and not c.complete
    for i in (2, 0, 1):  # a Ray job returns chunks as they finish
        cache_mod.write_chunk(c, i, x[c.record.chunk_slice(i)])
    again = cache_mod.open_cache(store, "ab" * 32)
    assert again.complete and again.record.done == [0, 1, 2]
    np.testing.assert_array_equal(again.read(), x)
    np.testing.assert_array_equal(again.take([9, 0, 5, 4]), x[[9, 0, 5, 4]])
    rows = [r for r, _ in again.iter_chunks()]
    np.testing.assert_array_equal(np.concatenate(rows), np.arange(10))
    with pytest.raises(ValueError, match="needs 4 rows"):
        cache_mod.write_chunk(again, 0, x[:3])


def test_an_incomplete_cache_is_not_read_and_a_damaged_record_restarts(isolated_store):
    from analysis.errors import UserInputError

    store = Store(isolated_store)
    c = cache_mod.create_cache(store, "cd" * 32, samples=8, width=2, dtype="float16", batch_size=4, rule="r",
                               chunk_rows=4)
    cache_mod.write_chunk(c, 0, np.ones((4, 2), np.float32))
    with pytest.raises(UserInputError, match="incomplete"):
        c.read()
    store.files.location(cache_mod.ActivationCache.rel("cd" * 32, ".json")).write_text("{not json")
    assert cache_mod.open_cache(store, "cd" * 32) is None


def test_extract_reads_back_what_it_wrote_and_float16_is_close():
    m, ds = models.load("zoo:mlp-s1"), data.load("digits", n=300)
    fresh = activations.extract(m, ds, ["net.fc2"], use_cache=False)["net.fc2"]
    stored = activations.extract(m, ds, ["net.fc2"])["net.fc2"]
    np.testing.assert_array_equal(fresh, stored)
    half = activations.extract(m, ds, ["net.fc2"], dtype="float16")
    assert half.cached == set()  # another storage dtype is another cache entry
    np.testing.assert_allclose(half["net.fc2"], fresh, rtol=1e-3, atol=1e-3 * np.abs(fresh).max())


def test_token_rows_resume_chunk_by_chunk(tmp_path):
    from tests.tiny_models import save_tiny

    m = models.load(f"hf:{save_tiny('gpt2', tmp_path / 'gpt2')}")
    ds = data.load("text", n=40)
    cache_mod.CHUNK_BYTES, saved = 4 * 32 * 8, cache_mod.CHUNK_BYTES  # 8 samples per chunk
    try:
        caches = activations.extract_chunked(m, ds, ["h.1"], pooling="tokens", batch_size=4)
    finally:
        cache_mod.CHUNK_BYTES = saved
    c = caches["h.1"]
    assert c.record.tokens and c.record.chunks == 5
    whole = activations.extract(m, ds, ["h.1"], pooling="tokens", batch_size=4, use_cache=False)
    np.testing.assert_array_equal(c.read(), whole["h.1"])
    np.testing.assert_array_equal(c.sample_of_row(), whole.sample_of_row["h.1"])
    # forget two chunks: the next extraction runs their batches only, and gives the same bytes
    c.record.done = [0, 2, 4]
    cache_mod._save_record(c.store, c.record)
    batches = []
    again = activations.extract_chunked(m, ds, ["h.1"], pooling="tokens", batch_size=4,
                                        progress=lambda f, msg: batches.append(f))["h.1"]
    assert len(batches) == 4  # chunks 1 and 3: 8 samples each, batches of 4
    assert again.read().tobytes() == whole["h.1"].tobytes()


MEMORY = """
    import numpy as np
    from analysis import activations, data, models
    from analysis.data.rows import LazyRows
    N = int(NROWS)
    freqs = np.linspace(0.001, 0.5, 64, dtype=np.float64)

    def read(rows):  # rows made from their index: nothing of the dataset is held in memory
        return (0.5 + 0.5 * np.sin(np.outer(np.asarray(rows, np.float64), freqs))).astype(np.float32)

    def dataset(n):
        return data.Dataset(f"synthetic-{n}", "vector", LazyRows(read, np.arange(n)), None, None, np.arange(n), n,
                            "all", 0, None, "rows from their index", fingerprint=f"sin-{n}")

    def hwm_kb():
        return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])

    m = models.load("zoo:mlp-s0")
    activations.extract_chunked(m, dataset(20_000), ["net.fc1", "net.relu2", "net.fc3"], batch_size=1024)
    try:
        open("/proc/self/clear_refs", "w").write("5")  # reset the peak to the current size
    except OSError:
        pass
    base = hwm_kb()
    caches = activations.extract_chunked(m, dataset(N), ["net.fc1", "net.relu2", "net.fc3"], batch_size=1024)
    peak = hwm_kb()
    rows = sum(c.shape[0] * c.shape[1] for c in caches.values())
    print(base, peak, rows * 4 // 1024, all(c.complete for c in caches.values()))
"""


def test_extracting_500000_rows_keeps_peak_memory_flat(tmp_path):
    """Peak RSS growth while extracting 500,000 rows (three layers: 1 GB of float32 activations)
    must stay a small fraction of the activations' size: chunks go to disk as they fill."""
    out = _run(MEMORY.replace("NROWS", "500_000"), tmp_path / "store")
    assert out.returncode == 0, out.stderr
    base, peak, activations_kb, complete = out.stdout.split()
    growth_mb = (int(peak) - int(base)) / 1024
    print(f"peak RSS growth {growth_mb:.0f} MB for {int(activations_kb) / 1024:.0f} MB of activations")
    assert complete == "True"
    assert growth_mb < 100, growth_mb
    assert growth_mb < int(activations_kb) / 1024 / 10
