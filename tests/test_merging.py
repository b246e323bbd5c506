"""analysis.merging: permutation alignment (activations, weights, cycle-consistent), interpolation
barriers with BatchNorm renormalisation, merged models as `merge:` references, block swaps."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from analysis import data, models
from analysis.errors import UserInputError
from analysis.merging import (align, align_many, apply, barrier, block_boundaries, consistent_permutations,
                              interpolate, merge, merged_model, permutations, relative_permutation, swap_map,
                              unit_groups)
from analysis.merging.blocks import a_range, refusal
from analysis.merging.cycle import synchronise
from analysis.merging.task import max_output_gap, outputs
from analysis.merging.units import invert, permute_state
from analysis.merging.weights import state_of, with_state


@pytest.fixture(scope="module")
def digits():
    return data.load("digits", n=300)


def _permuted_copy(model, seed: int = 1):
    groups = unit_groups(model)
    rng = np.random.default_rng(seed)
    true = {g.name: rng.permutation(g.size) for g in groups}
    return with_state(model, permute_state(state_of(model), groups, true)), true


# ------------------------------------------------------------------ unit groups
def test_unit_groups_of_the_zoo_architectures():
    mlp = unit_groups(models.load("zoo:mlp-s0"))
    assert [(g.name, g.size, g.probe) for g in mlp] == [("net.fc1", 128, "net.relu1"), ("net.fc2", 128, "net.relu2"),
                                                         ("net.fc3", 128, "net.relu3")]
    assert [m.key for m in mlp[0].members] == ["net.fc1.weight", "net.fc1.bias", "net.fc2.weight"]
    cnn = unit_groups(models.load("zoo:cnn-s0"))
    assert [g.size for g in cnn] == [16, 32, 64]
    conv_ae = {g.name: g for g in unit_groups(models.load("zoo:conv-ae-b8"))}
    # conv2's 32 channels reach the bottleneck through a flatten of 2x2 maps: 4 features per channel
    assert [(m.key, m.axis, m.repeat) for m in conv_ae["encoder.conv2"].members][-1] == ("encoder.bottleneck.weight", 1, 4)
    # the decoder's Linear is unflattened into channels: its features cannot be permuted one by one
    assert "decoder.fc" not in conv_ae


@pytest.mark.parametrize("ref", ["zoo:mlp-s0", "zoo:cnn-s0", "zoo:conv-ae-b8"])
@pytest.mark.parametrize("method", ["activations", "weights"])
def test_a_permuted_copy_is_aligned_back_exactly(ref, method, digits):
    model = models.load(ref)
    copy, true = _permuted_copy(model)
    assert max_output_gap(copy, model, digits) < 1e-10  # permuting units changes nothing the model computes
    found = permutations(model, copy, digits, method)
    for name, perm in found.perms.items():
        # new unit j of the aligned copy = the copy's unit perm[j] = the model's unit true[perm[j]]
        np.testing.assert_array_equal(true[name][perm], np.arange(len(perm)))
    aligned = apply(copy, found)
    for key, value in state_of(model).items():
        torch.testing.assert_close(state_of(aligned)[key], value, rtol=0, atol=0)


@pytest.mark.parametrize("pair", [("zoo:mlp-s0", "zoo:mlp-s1"), ("zoo:cnn-s0", "zoo:cnn-s1")])
@pytest.mark.parametrize("method", ["activations", "weights"])
def test_aligned_b_computes_exactly_what_b_computes(pair, method, digits):
    a, b = (models.load(r) for r in pair)
    aligned = align(a, b, digits, method)
    assert max_output_gap(aligned, b, digits) < 1e-10  # float64: the same function
    ob, oa = outputs(b, digits), outputs(aligned, digits)
    assert float(torch.max(torch.abs(oa - ob))) <= 1e-5 * max(1.0, float(torch.max(torch.abs(ob))))
    found = aligned.alignment
    assert any(not np.array_equal(p, np.arange(len(p))) for p in found.perms.values())
    for name in found.layers:  # matched units correlate far better than units that merely share an index
        assert found.after[name] > found.before[name] + 0.3


def test_transformer_mlp_blocks_are_permuted_and_aligned_back(tiny_bert_dir):
    bert = models.load(f"hf:{tiny_bert_dir}")
    text = data.load("text", n=24)
    groups = unit_groups(bert)
    assert [(g.name, g.size, g.tokens) for g in groups] == [
        (f"encoder.layer.{i}.intermediate.dense", 64, True) for i in range(2)]
    copy, true = _permuted_copy(bert, seed=3)
    assert max_output_gap(copy, bert, text) < 1e-10
    for method in ("activations", "weights"):
        found = permutations(bert, copy, text, method)
        for name, perm in found.perms.items():
            np.testing.assert_array_equal(true[name][perm], np.arange(len(perm)))


def test_alignment_refuses_different_architectures(digits):
    with pytest.raises(UserInputError, match="same architecture.*net.fc1 128.*net.fc1 256"):
        permutations(models.load("zoo:mlp-s0"), models.load("zoo:mlp-wide"), digits)
    with pytest.raises(UserInputError, match="same architecture"):
        permutations(models.load("zoo:mlp-s0"), models.load("zoo:cnn-s0"), digits)
    with pytest.raises(UserInputError, match="needs data"):
        permutations(models.load("zoo:mlp-s0"), models.load("zoo:mlp-s1"), None, "activations")


# ------------------------------------------------------------------ cycle consistency
def test_synchronisation_recovers_true_permutations_from_noisy_pairs():
    rng = np.random.default_rng(0)
    d, m = 20, 4
    truth = [np.arange(d)] + [rng.permutation(d) for _ in range(m - 1)]  # unit of model i at universe position a

    def pair(i, j):  # perm[a] = unit of j matched to unit a of i
        q = np.empty(d, dtype=np.int64)
        q[truth[i]] = truth[j]
        return q

    pairwise = {(i, j): pair(i, j) for i in range(m) for j in range(i + 1, m)}
    noisy = dict(pairwise)
    wrong = pairwise[(1, 2)].copy()
    wrong[[0, 1]] = wrong[[1, 0]]  # one pairwise match swapped: that pair alone breaks every cycle through it
    noisy[(1, 2)] = wrong
    for given in (pairwise, noisy):
        found = synchronise(given, m, d)
        for i in range(m):
            np.testing.assert_array_equal(found[i], truth[i])


def test_cycle_consistent_alignment_of_three_seeds(digits):
    ms = [models.load(f"zoo:mlp-s{i}") for i in range(3)]
    naive = {(i, j): permutations(ms[i], ms[j], digits).perms for i, j in ((0, 1), (1, 2), (2, 0))}
    found = [a.perms for a in consistent_permutations(ms, digits)]
    for name in found[0]:
        back = invert(naive[(0, 1)][name])[invert(naive[(1, 2)][name])[invert(naive[(2, 0)][name])]]
        assert np.mean(back == np.arange(len(back))) < 0.5  # pairwise maps disagree around the cycle
        perms = [f[name] for f in found]
        cycle = relative_permutation(perms, 0, 1)[relative_permutation(perms, 1, 2)[relative_permutation(perms, 2, 0)]]
        np.testing.assert_array_equal(cycle, np.arange(len(cycle)))
    for original, aligned in zip(ms, align_many(ms, digits)):
        assert max_output_gap(original, aligned, digits) < 1e-10


# ------------------------------------------------------------------ interpolation
def test_barrier_is_the_largest_excess_over_the_endpoints_line():
    assert barrier([0.0, 0.5, 1.0], [1.0, 3.0, 2.0]) == (1.5, 0.5)
    assert barrier([0.0, 0.25, 0.5, 0.75, 1.0], [2.0, 1.75, 1.5, 1.25, 1.0]) == (0.0, 0.0)  # on the line: none


def test_barrier_after_alignment_is_clearly_below_the_barrier_before():
    ds = data.load("digits", n=500)
    a, b = models.load("zoo:mlp-s0"), models.load("zoo:mlp-s1")
    before = interpolate(a, b, ds, steps=11)
    assert before.barrier > 1.0 and 0.3 <= before.barrier_alpha <= 0.7  # measured 1.335 at alpha 0.5
    assert before.loss[0] == pytest.approx(float(torch.nn.functional.cross_entropy(
        outputs(a, ds).double(), torch.from_numpy(ds.labels).long())), rel=1e-9)
    for method in ("activations", "weights"):
        after = interpolate(a, align(a, b, ds, method), ds, steps=11)
        assert after.barrier < 0.25 * before.barrier  # measured 0.065 (activations), 0.054 (weights)
        assert after.accuracy.min() > 0.9 > before.accuracy.min()
        np.testing.assert_allclose([after.loss[0], after.loss[-1]], [before.loss[0], before.loss[-1]], rtol=1e-6)


class _BNNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.BatchNorm1d(32), torch.nn.ReLU(),
                                       torch.nn.Linear(32, 10))

    def forward(self, x):
        return self.net(x)


def _bn_model(seed: int):
    from analysis.models.torch_models import TorchModel

    torch.manual_seed(seed)
    module = _BNNet()
    with torch.no_grad():
        module.net[1].running_mean.normal_()
        module.net[1].running_var.uniform_(0.5, 2.0)
    return TorchModel(module, f"upload:{seed:016x}", "bn", "classifier", "MLP with BatchNorm", f"{seed:064x}", 64)


def test_batchnorm_statistics_are_recomputed_at_each_alpha(digits):
    from analysis.merging.interpolate import renormalise

    a, b = _bn_model(0), _bn_model(1)
    groups = unit_groups(a)
    assert [m.key for m in groups[0].members] == ["net.0.weight", "net.0.bias", "net.1.weight", "net.1.bias",
                                                   "net.1.running_mean", "net.1.running_var", "net.3.weight"]
    copy, _ = _permuted_copy(a)
    assert max_output_gap(copy, a, digits) < 1e-10  # BatchNorm's statistics moved with their units
    curve = interpolate(a, b, digits, steps=3)
    assert curve.renormalised
    work = with_state(a, state_of(a))
    renormalise(work, digits)
    pre = work.module.net[0](torch.from_numpy(np.asarray(digits.inputs, np.float32))).double()
    bn = work.module.net[1]
    np.testing.assert_allclose(bn.running_mean.numpy(), pre.mean(0).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn.running_var.numpy(), pre.var(0, unbiased=True).numpy(), rtol=1e-4, atol=1e-6)
    from analysis.merging.task import score

    assert curve.loss[0] == pytest.approx(score(work, digits).loss, rel=1e-6)  # alpha = 0 is A, renormalised
    assert not np.allclose(a.module.net[1].running_mean.numpy(), bn.running_mean.numpy())  # A itself untouched


def test_interpolation_refuses_models_without_a_task_loss(tiny_bert_dir):
    bert = models.load(f"hf:{tiny_bert_dir}")
    with pytest.raises(UserInputError, match="without a task loss"):
        interpolate(bert, bert, data.load("text", n=20))


# ------------------------------------------------------------------ merged models as references
def test_merged_model_is_a_reference_that_round_trips_through_a_share_link(digits, isolated_store):
    import json

    from analysis.spec import AnalysisSpec
    from analysis.store import default_store

    a, b = models.load("zoo:mlp-s0"), models.load("zoo:mlp-s1")
    found = permutations(a, b, digits)
    ref = merge(a, b, digits, 0.5, found)
    assert ref.startswith("merge:") and len(ref) == len("merge:") + 16
    assert merge(a, b, digits, 0.5, found) == ref  # the same merge gets the same id
    link = AnalysisSpec("similarity", {"a": "zoo:mlp-s0", "b": ref}).url("http://localhost:8501")
    query = {k: v[0] for k, v in __import__("urllib.parse").parse.parse_qs(link.split("?", 1)[1]).items()}
    spec, problems = AnalysisSpec.from_query("similarity", query)
    assert not problems and spec.params["b"] == ref
    loaded = models.load(spec.params["b"])
    expected = merged_model(a, b, digits, 0.5, found)
    for key, value in state_of(expected).items():
        torch.testing.assert_close(state_of(loaded)[key], value, rtol=0, atol=0)
    assert loaded.ref == ref and loaded.kind == "classifier" and loaded.layers == a.layers
    # stored as a safetensors blob and a JSON recipe: nothing to unpickle
    blob, _ = default_store().read_blob(ref[6:], kind="merge")
    header = json.loads(blob[8: 8 + int.from_bytes(blob[:8], "little")])
    assert json.loads(header["__metadata__"]["replens_merge"])["alpha"] == 0.5
    recipe = default_store().get_doc("merge", ref[6:])
    assert recipe["a"] == "zoo:mlp-s0" and recipe["aligned"] == "activations" and recipe["base"] == "zoo:mlp-s0"
    # the merged model opens where any model does: here, a similarity matrix against A
    from analysis import similarity

    sim = similarity.layer_similarity(a, loaded, digits)
    assert sim.shape == (7, 7) and np.isfinite(sim.to_numpy()).all()


def test_merge_references_are_checked():
    with pytest.raises(UserInputError, match="Not a merge id"):
        models.parse_ref("merge:../../etc")
    with pytest.raises(UserInputError, match="No merged model merge:0123456789abcdef on this server"):
        models.load("merge:0123456789abcdef")


# ------------------------------------------------------------------ block swaps
def test_boundaries_and_relative_depth():
    assert block_boundaries(models.load("zoo:mlp-s0")) == ["net.relu1", "net.relu2", "net.relu3", "net.logits"]
    assert block_boundaries(models.load("zoo:cnn-s0")) == ["net.relu1", "net.pool", "net.flatten", "net.logits"]
    assert len(block_boundaries(models.load("zoo:mlp-ae-b8"))) == 6
    assert [a_range(i, i, 4, 4) for i in range(4)] == [(0, 0), (1, 1), (2, 2), (3, 3)]
    assert [a_range(i, i, 8, 4) for i in range(4)] == [(0, 1), (2, 3), (4, 5), (6, 7)]  # a teacher of twice the depth
    assert a_range(1, 2, 8, 4) == (2, 5)


def test_block_swaps_refuse_what_the_architectures_do_not_allow(digits):
    mlp, wide, ae = models.load("zoo:mlp-s0"), models.load("zoo:mlp-wide"), models.load("zoo:mlp-ae-b8")
    assert "different depths" not in refusal(mlp, ae, digits, "translator")
    assert refusal(mlp, ae, digits, "translator") == ""
    assert "A has 4 blocks and B has 6" in refusal(mlp, ae, digits, "none")
    assert "widths must agree" in refusal(wide, mlp, digits, "none")
    assert "same architecture" in refusal(wide, mlp, digits, "permutation")
    with pytest.raises(UserInputError, match="needs a translator"):
        swap_map(mlp, ae, digits, "none")


def test_block_swaps_known_answers(digits):
    a, b = models.load("zoo:mlp-s0"), models.load("zoo:mlp-s1")
    same = swap_map(b, b, digits, "none")  # B's blocks replaced by its own: B, whatever the range
    np.testing.assert_allclose(same.value[np.triu_indices(4)], same.own_b)
    raw = swap_map(a, b, digits, "none")
    assert raw.value[0, 3] == raw.own_a  # every block from A: A itself
    assert raw.value[1, 1] < 0.5  # a block of another seed without a bridge reads units in another order
    bridged = swap_map(a, b, digits, "translator", "ortho", anchors=100)
    assert np.nanmin(bridged.value) > 0.85 > np.nanmax(raw.value[1:, 1:])
    assert bridged.metric == "accuracy" and np.isnan(bridged.value[3, 0])
