"""analysis.lrp: known answers (LRP-0 = gradient x input, hand-computed rules), conservation through
residuals, LayerNorm and a transformer block, agreement with captum where captum is correct, no side
effects on a shared model (also after an error, also under concurrency), and faithfulness on a toy
task where the informative features are known."""
import copy
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from torch import nn

from analysis import data, lrp, models
from analysis.errors import UserInputError


def mlp(bias=False, seed=0, widths=(10, 32, 32, 5)):
    torch.manual_seed(seed)
    layers = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b, bias=bias))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers).double().eval()


def grad_x_input(net, x, target):
    x = x.clone().requires_grad_(True)
    out = net(x)
    g, = torch.autograd.grad(out[:, target].sum(), x)
    return (x * g).detach().numpy(), out[:, target].detach().numpy()


# --------------------------------------------------------------------------- known answers
def test_lrp0_equals_gradient_times_input_on_a_bias_free_relu_mlp():
    net = mlp()
    x = torch.randn(16, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    a = lrp.attribute(net, x, 2, rule="epsilon", epsilon=1e-9)
    gxi, f = grad_x_input(net, x, 2)
    np.testing.assert_allclose(a.relevance, gxi, rtol=1e-5, atol=1e-5 * np.abs(gxi).max())
    np.testing.assert_allclose(a.output, f, rtol=1e-12)
    np.testing.assert_allclose(a.conservation, 1.0, atol=1e-5)
    hidden = lrp.attribute(net, x, 2, rule="epsilon", epsilon=1e-9, layer="2")  # after the first ReLU
    assert hidden.relevance.shape == (16, 32)
    np.testing.assert_allclose(hidden.relevance.sum(1) / hidden.output, 1.0, atol=1e-5)  # layer-wise conservation


def test_zplus_conserves_with_non_negative_inputs():
    net = mlp(seed=3)
    x = torch.rand(12, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    a = lrp.attribute(net, x, "predicted", rule="zplus", epsilon=1e-12)
    assert (a.output > 0).all()
    np.testing.assert_allclose(a.conservation, 1.0, atol=1e-5)
    assert not np.allclose(a.relevance, grad_x_input(net, x, 0)[0])  # a different rule, not LRP-0


def test_gamma_picks_the_branch_by_the_sign_of_the_output():
    """One linear unit, inputs (1, -1), gamma = 1: the contributions sharing the output's sign are doubled."""
    lin = nn.Linear(2, 1, bias=False).double()
    x = torch.tensor([[1.0, -1.0]], dtype=torch.float64)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[2.0, 1.0]]))  # z = 1 > 0: contributions (2, -1) -> (4, -1), z' = 3
    a = lrp.attribute(lin, x, 0, rule="gamma", gamma=1.0, epsilon=0)
    np.testing.assert_allclose(a.relevance, [[4 / 3, -1 / 3]], rtol=1e-12)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[-2.0, 1.0]]))  # z = -3 < 0: contributions (-2, -1) -> (-4, -2), z' = -6
    a = lrp.attribute(lin, x, 0, rule="gamma", gamma=1.0, epsilon=0)
    np.testing.assert_allclose(a.relevance, [[-2.0, -1.0]], rtol=1e-12)


def test_gamma_zero_is_epsilon_and_alpha_beta_conserves():
    net = mlp(bias=False, seed=4)
    x = torch.rand(8, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    eps = lrp.attribute(net, x, 1, rule="epsilon", epsilon=1e-9)
    g0 = lrp.attribute(net, x, 1, rule="gamma", gamma=0.0, epsilon=1e-9)
    np.testing.assert_allclose(g0.relevance, eps.relevance, rtol=1e-6, atol=1e-12)
    ab = lrp.attribute(net, x, "predicted", rule="alpha-beta", epsilon=1e-12)
    np.testing.assert_allclose(ab.conservation, 1.0, atol=1e-5)


def test_box_and_flat_rules_by_hand():
    """One layer, w = (1, -1), inputs (1, 0.5) in [0, 1]: z = 0.5, z^B = 0.5 - 0 + 1 = 1.5."""
    lin = nn.Linear(2, 1, bias=False).double()
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, -1.0]]))
    x = torch.tensor([[1.0, 0.5]], dtype=torch.float64)
    box = lrp.attribute(lin, x, 0, rule="box", epsilon=0, low=0.0, high=1.0)
    np.testing.assert_allclose(box.relevance, [[1 / 3, 1 / 6]], rtol=1e-12)
    flat = lrp.attribute(lin, x, 0, rule="flat", epsilon=0)
    np.testing.assert_allclose(flat.relevance, [[0.25, 0.25]], rtol=1e-12)


def cosine(a, b):
    return float((a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b))


def test_epsilon_gamma_box_follows_zennit_the_box_rule_is_for_a_first_convolution():
    """zennit's EpsilonGammaBox maps the box rule to the first *convolution*: on an MLP every dense
    layer gets epsilon (RepLens used to put the box rule on the first dense layer: cosine 0.45 with
    zennit's map on mlp-s0). That variant stays available as rule 'box', and a note says so."""
    m = models.load("zoo:mlp-s0")
    x = data.load("digits", n=16).inputs
    composite = lrp.attribute(m, x, "predicted", composite="epsilon-gamma-box")
    epsilon = lrp.attribute(m, x, "predicted", rule="epsilon")
    np.testing.assert_allclose(composite.relevance, epsilon.relevance, rtol=1e-12, atol=1e-12)
    assert composite.rule == "epsilon-gamma-box"
    assert any("first convolution only" in n and "Rule 'box'" in n for n in composite.notes)
    box = lrp.attribute(m, x, "predicted", rule="box")
    assert cosine(box.relevance, composite.relevance) < 0.6
    # on the CNN the box rule reads the pixels; with gamma = 0 (gamma = epsilon) it is rule 'box'
    cnn = models.load("zoo:cnn-s0")
    g0 = lrp.attribute(cnn, x, "predicted", composite="epsilon-gamma-box", gamma=0.0)
    np.testing.assert_allclose(g0.relevance, lrp.attribute(cnn, x, "predicted", rule="box").relevance,
                               rtol=1e-4, atol=1e-6 * np.abs(g0.relevance).max())
    assert not g0.notes
    with pytest.raises(UserInputError, match="Unknown LRP rule"):
        lrp.attribute(m, x, 0, rule="deeplift")


def one_biased_layer():
    lin = nn.Linear(3, 1).double()
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[2.0, -1.0, 0.5]]))
        lin.bias.copy_(torch.tensor([0.5]))
    return lin, torch.tensor([[1.0, 0.5, -2.0]], dtype=torch.float64)


def test_bias_conventions_by_hand():
    """One unit, w = (2, -1, 0.5), b = 0.5, a = (1, 0.5, -2): z = 2 - 0.5 - 1 + 0.5 = 1.
    z+ (zennit): positive parts a+ w+ = (2, 0, 0) and a- w- = (0, 0, 0), denominator 2 + b+ = 2.5 with
    biases, 2 without: R = (2, 0, 0) * z / 2.5 or / 2.
    alpha-beta (2, 1): negative parts a+ w- = (0, -0.5, 0), a- w+ = (0, 0, -1), denominator -1.5 + b- = -1.5
    either way: R = 2 (2, 0, 0) / 2.5 - ((0, -0.5, -1) / -1.5) with biases, / 2 without.
    w^2: (4, 1, 0.25) / (5.25 + b^2 = 5.5) with biases, / 5.25 without.
    epsilon: a w / z with biases, / (z - b) = 0.5 without."""
    lin, x = one_biased_layer()
    contributions = np.array([2.0, -0.5, -1.0])
    expected = {
        ("zplus", True): np.array([2.0, 0, 0]) / 2.5, ("zplus", False): np.array([2.0, 0, 0]) / 2.0,
        ("alpha-beta", True): 2 * np.array([2.0, 0, 0]) / 2.5 - np.array([0, -0.5, -1.0]) / -1.5,
        ("alpha-beta", False): 2 * np.array([2.0, 0, 0]) / 2.0 - np.array([0, -0.5, -1.0]) / -1.5,
        ("w2", True): np.array([4.0, 1.0, 0.25]) / 5.5, ("w2", False): np.array([4.0, 1.0, 0.25]) / 5.25,
        ("epsilon", True): contributions / 1.0, ("epsilon", False): contributions / 0.5,
    }
    for (rule, bias), r in expected.items():
        a = lrp.attribute(lin, x, 0, rule=rule, epsilon=0.0, bias=bias)
        np.testing.assert_allclose(a.relevance[0], r, rtol=1e-12, err_msg=f"{rule}, bias={bias}")
        assert a.description.endswith(lrp.BIAS_CONVENTIONS[bias])
    # flat ignores biases and in the box rule they cancel: with no other rule the convention is moot
    assert "play no part" in lrp.RuleSet("first layer only", "box", "flat", "flat").bias_convention
    for rule in ("flat", "box"):
        np.testing.assert_allclose(lrp.attribute(lin, x.abs() / 2, 0, rule=rule, epsilon=0.0, bias=True).relevance,
                                   lrp.attribute(lin, x.abs() / 2, 0, rule=rule, epsilon=0.0, bias=False).relevance,
                                   rtol=1e-12)


def test_without_biases_z_plus_passes_on_all_relevance():
    """On a biased ReLU MLP with non-negative inputs, z+ without biases conserves (sum R = f); with
    zennit's default the positive biases take their share."""
    net = mlp(bias=True, seed=6)
    with torch.no_grad():
        for mod in net:
            if isinstance(mod, nn.Linear):
                mod.bias.abs_()
    x = torch.rand(10, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    without = lrp.attribute(net, x, "predicted", rule="zplus", epsilon=1e-12, bias=False)
    np.testing.assert_allclose(without.conservation, 1.0, atol=1e-9)
    default = lrp.attribute(net, x, "predicted", rule="zplus", epsilon=1e-12)
    assert (default.conservation < 1 - 1e-3).all()


# --------------------------------------------------------------------------- conservation beyond captum
class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.w1, self.w2 = nn.Linear(8, 8, bias=False), nn.Linear(8, 3, bias=False)

    def forward(self, x):
        return self.w2(torch.relu(self.w1(x)) + x)


def test_residual_block_conserves_and_captum_is_refused():
    torch.manual_seed(0)
    net = Residual().double().eval()
    x = torch.randn(10, 8, dtype=torch.float64)
    a = lrp.attribute(net, x, "predicted", epsilon=1e-12)
    np.testing.assert_allclose(a.conservation, 1.0, atol=1e-5)
    assert "forward" in lrp.captum_supported(net)  # captum would count the skip connection twice


class NormNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(6, 12, bias=False), nn.Linear(12, 2, bias=False)
        self.norm = nn.LayerNorm(12, bias=False)

    def forward(self, x):
        return self.b(self.norm(self.a(x)))


def test_layernorm_with_detached_std_conserves():
    torch.manual_seed(1)
    net = NormNet().double().eval()
    with torch.no_grad():
        net.norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(9, 6, dtype=torch.float64)
    a = lrp.attribute(net, x, "predicted", epsilon=1e-12)
    np.testing.assert_allclose(a.conservation, 1.0, atol=1e-5)
    plain = lrp.gradient_x_input(net, x, a.target)  # LayerNorm is scale invariant: sum x * grad ~ 0
    assert np.all(np.abs(plain.relevance_sum) < 1e-3 * np.abs(plain.output))


class Block(nn.Module):
    """A pre-norm transformer block without biases: attention + GELU MLP, two residuals."""

    def __init__(self, d=16, heads=2):
        super().__init__()
        self.heads = heads
        self.n1, self.n2 = nn.LayerNorm(d, bias=False), nn.LayerNorm(d, bias=False)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d, bias=False) for _ in range(4))
        self.up, self.down = nn.Linear(d, 4 * d, bias=False), nn.Linear(4 * d, d, bias=False)
        self.head = nn.Linear(d, 3, bias=False)

    def split(self, t):
        b, n, d = t.shape
        return t.reshape(b, n, self.heads, d // self.heads).transpose(1, 2)

    def forward(self, x):
        h = self.n1(x)
        att = torch.nn.functional.scaled_dot_product_attention(self.split(self.q(h)), self.split(self.k(h)),
                                                               self.split(self.v(h)))
        x = x + self.o(att.transpose(1, 2).reshape(x.shape))
        x = x + self.down(torch.nn.functional.gelu(self.up(self.n2(x))))
        return self.head(x.mean(1))


def test_transformer_block_conserves_with_cp_lrp():
    torch.manual_seed(2)
    net = Block().double().eval()
    x = torch.randn(4, 7, 16, dtype=torch.float64)
    a = lrp.attribute(net, x, "predicted", epsilon=1e-12)
    with torch.no_grad():
        np.testing.assert_allclose(a.output, net(x).max(1).values.numpy(), rtol=1e-10)  # forward unchanged
    np.testing.assert_allclose(a.conservation, 1.0, atol=1e-6)
    # the MLP branch's share, from the same backward pass; the rest flows through the residual
    layer = lrp.attribute(net, x, a.target, epsilon=1e-12, layer="n2")
    assert layer.relevance.shape == (4, 7, 16)
    np.testing.assert_array_equal(layer.input_relevance, a.relevance)
    assert np.all(np.abs(layer.relevance.sum((1, 2))) < np.abs(a.output))


def test_modules_whose_insides_the_rules_cannot_reach_are_refused():
    class MHA(nn.Module):
        def __init__(self):
            super().__init__()
            self.att, self.head = nn.MultiheadAttention(8, 2, batch_first=True), nn.Linear(8, 2)

        def forward(self, x):
            return self.head(self.att(x, x, x, need_weights=False)[0].mean(1))

    net = MHA().eval()
    before = snapshot(net)
    with pytest.raises(UserInputError, match="MultiheadAttention"):
        lrp.attribute(net, torch.randn(2, 5, 8), 0)
    lrp.gradient_x_input(net, torch.randn(2, 5, 8), 0)  # no rules: plain gradient x input still works
    assert_same(before, snapshot(net))


def test_text_model_without_biases_conserves_at_the_tokens(tiny_bert_dir):
    """The whole transformers path (embedding look-ups, LayerNorm, sdpa attention, GELU, mean pooling,
    a linear probe score): with every bias zeroed the token relevance sums to the score."""
    m = models.load(f"hf:{tiny_bert_dir}")  # a private copy: zeroing its biases touches no one else
    with torch.no_grad():
        for name, p in m.module.named_parameters():
            if name.endswith("bias"):
                p.zero_()
    w = torch.randn(32, dtype=torch.float32, generator=torch.Generator().manual_seed(0))
    a = lrp.attribute(m, ["a cat sat on the mat", "stocks fell sharply today"], lambda e: e @ w, epsilon=1e-9)
    np.testing.assert_allclose(a.conservation, 1.0, atol=1e-4)
    assert a.tokens[0][0] == "[CLS]" and a.relevance.shape == a.mask.shape
    assert (a.relevance[~a.mask] == 0).all()
    pair = lrp.explain_similarity(m, "a cat sat on the mat", "a dog lay on the rug", epsilon=1e-9)
    np.testing.assert_allclose(pair.conservation, 1.0, atol=1e-4)  # both sentences' tokens together


# --------------------------------------------------------------------------- captum, where it is correct
@pytest.mark.parametrize("ref", ["zoo:mlp-s0", "zoo:cnn-s0"])
@pytest.mark.parametrize("rule", ["epsilon", "zplus"])
def test_agrees_with_captum_on_relu_nets(ref, rule):
    net = copy.deepcopy(models.load(ref).module).double()  # float64 so the comparison is tight
    x = torch.as_tensor(data.load("digits", n=32).inputs, dtype=torch.float64)
    bias = rule == "epsilon"  # captum's conventions: epsilon with the biases, z+ without
    assert lrp.captum_supported(net, lrp.rule_set(rule, bias=bias)) is None
    assert "bias" in lrp.captum_supported(net, lrp.rule_set(rule, bias=not bias))
    ours = lrp.attribute(net, x, "predicted", rule=rule, epsilon=1e-9, bias=bias)
    theirs = lrp.attribute(net, x, "predicted", rule=rule, epsilon=1e-9, backend="captum", bias=bias)
    np.testing.assert_allclose(ours.relevance, theirs.relevance, rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(ours.target, theirs.target)


# --------------------------------------------------------------------------- no side effects
def snapshot(module):
    hooks = [(n, len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
             for n, m in module.named_modules()]
    attrs = [n for n, m in module.named_modules() if hasattr(m, "rule") or hasattr(m, "activations")]
    grads = [(n, p.requires_grad, p.grad is None) for n, p in module.named_parameters()]
    return {k: v.clone() for k, v in module.state_dict().items()}, hooks, attrs, grads, module.training


def assert_same(before, after):
    assert before[0].keys() == after[0].keys()
    for k in before[0]:
        assert torch.equal(before[0][k], after[0][k]), k
    assert before[1:] == after[1:]


@pytest.mark.parametrize("backend", ["replens", "captum"])
def test_no_side_effects_even_after_an_error(backend):
    m = models.load("zoo:cnn-s0")
    x = torch.as_tensor(data.load("digits", n=8).inputs)
    with torch.no_grad():
        ref_out = m.module(x).clone()
    before = snapshot(m.module)
    rules = ["epsilon", "zplus"] if backend == "captum" else ["epsilon", "epsilon-gamma-box", "alpha-beta"]
    for rule in rules:
        lrp.attribute(m, x, "predicted", rule=rule, backend=backend, bias=rule != "zplus",
                      layer=None if backend == "captum" else "net.conv2")

    def failing(out):
        raise RuntimeError("target failed midway")

    with pytest.raises(RuntimeError, match="midway"):
        lrp.attribute(m, x, failing, layer="net.conv3")
    with pytest.raises(UserInputError):
        lrp.attribute(m, x, 99, backend=backend)
    assert_same(before, snapshot(m.module))
    with torch.no_grad():
        assert torch.equal(m.module(x), ref_out)


def test_plain_module_with_trainable_parameters_keeps_its_grads_and_mode():
    net = mlp(bias=True).train()
    for p in net.parameters():
        p.requires_grad_(True)
    before = snapshot(net)
    lrp.attribute(net, torch.randn(3, 10, dtype=torch.float64), 0, rule="gamma", layer="2")
    assert_same(before, snapshot(net))  # no .grad written, still in training mode


def test_pooled_working_copy_follows_changed_and_replaced_weights():
    """Working copies are pooled per model: a weight changed in place, a parameter replaced and a
    layer replaced must all be seen by the next attribution (R = x * w for one bias-free layer)."""
    net = nn.Sequential(nn.Linear(3, 1, bias=False)).double().eval()
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, -2.0, 0.5]]))
    x = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64)

    def relevance():
        return lrp.attribute(net, x, 0, rule="epsilon", epsilon=1e-12).relevance[0]

    np.testing.assert_allclose(relevance(), [1.0, -4.0, 1.5], rtol=1e-9)
    with torch.no_grad():
        net[0].weight.mul_(2)
    np.testing.assert_allclose(relevance(), [2.0, -8.0, 3.0], rtol=1e-9)
    net[0].weight = nn.Parameter(torch.tensor([[0.5, 0.5, 0.5]], dtype=torch.float64))
    np.testing.assert_allclose(relevance(), [0.5, 1.0, 1.5], rtol=1e-9)
    net[0] = nn.Linear(3, 1, bias=False).double()
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[-1.0, 1.0, 2.0]]))
    np.testing.assert_allclose(relevance(), [-1.0, 2.0, 6.0], rtol=1e-9)


def test_concurrent_attributions_equal_sequential(tiny_bert_dir):
    m = models.load("zoo:mlp-s0")
    x = data.load("digits", n=32).inputs
    jobs = [(r, t) for r in ("epsilon", "zplus", "epsilon-gamma-box", "gamma") for t in ("predicted", 3)]
    sequential = [lrp.attribute(m, x, t, rule=r, layer="net.fc2").relevance for r, t in jobs]
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(lambda job: lrp.attribute(m, x, job[1], rule=job[0], layer="net.fc2").relevance,
                                 jobs * 2))
    for i, r in enumerate(parallel):
        np.testing.assert_array_equal(r, sequential[i % len(jobs)])
    text = models.load(f"hf:{tiny_bert_dir}")
    w = torch.ones(32)
    sentences = ["one two three", "the sun is out"]
    alone = lrp.attribute(text, sentences, lambda e: e @ w).relevance
    barrier = threading.Barrier(3)

    def run(_):
        barrier.wait()
        return lrp.attribute(text, sentences, lambda e: e @ w).relevance

    with ThreadPoolExecutor(3) as pool:
        for r in pool.map(run, range(3)):
            np.testing.assert_array_equal(r, alone)


# --------------------------------------------------------------------------- faithfulness
@pytest.fixture(scope="module")
def toy():
    """20 features, the class depends on features 0..4 only."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 20, generator=g)
    w = torch.tensor([2.0, -2.0, 1.5, -1.5, 1.0])
    y = (x[:, :5] @ w > 0).long()
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 2))
    opt = torch.optim.Adam(net.parameters(), lr=2e-2)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    net.eval()
    assert (net(x).argmax(1) == y).float().mean() > 0.95
    return net, x[:200], y[:200]


def test_relevance_concentrates_on_the_informative_features(toy):
    net, x, y = toy
    a = lrp.attribute(net, x, y, rule="epsilon")
    mass = np.abs(a.relevance).sum(0)
    assert mass[:5].sum() / mass.sum() > 0.6  # 5 of 20 features: 0.25 if spread evenly
    assert mass[:5].min() > 3 * mass[5:].max()  # every informative feature above every noise feature


def test_pixel_flipping_beats_random(toy):
    net, x, y = toy
    a = lrp.attribute(net, x, y, rule="epsilon")
    g = lrp.gradient_x_input(net, x, y)
    f = lrp.faithfulness(net, x, {"lrp": a.relevance, "gradient x input": g.relevance}, y, steps=20)
    assert f.fractions[0] == 0 and f.fractions[-1] == 1 and len(f.fractions) == 21
    np.testing.assert_allclose(f.curves["lrp"][0], a.output.mean(), rtol=1e-5)  # nothing removed yet
    assert f.aopc["lrp"] > 2 * f.aopc["random"] and f.aopc["gradient x input"] > 2 * f.aopc["random"]


def test_aopc_and_removal_curve_by_hand():
    # score = sum of kept features; removing in relevance order (3, 1, 2)
    x = np.array([[1.0, 3.0, 2.0]])
    curve = lrp.removal_curve(lambda keep: (x * keep).sum(1), np.array([[0.1, 0.9, 0.5]]), steps=3)
    np.testing.assert_array_equal(curve, [[6.0, 3.0, 1.0, 0.0]])
    np.testing.assert_allclose(lrp.aopc(curve), [(0 + 3 + 5 + 6) / 4])


def test_rank_agreement_and_unit_relevance():
    r = np.arange(12.0).reshape(2, 6)
    np.testing.assert_allclose(lrp.rank_agreement(r, 2 * r + 1), 1.0)
    np.testing.assert_allclose(lrp.rank_agreement(r, -r), -1.0)
    assert np.isnan(lrp.rank_agreement(np.zeros((1, 4)), np.ones((1, 4)))[0])
    with pytest.raises(UserInputError, match="same inputs"):
        lrp.rank_agreement(r, np.zeros((2, 5)))
    from scipy.stats import spearmanr

    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 4, (5, 30)).astype(float), rng.normal(size=(5, 30))  # many ties in a
    np.testing.assert_allclose(lrp.rank_agreement(a, b), [spearmanr(a[i], b[i])[0] for i in range(5)], rtol=1e-12)
    conv = np.ones((2, 3, 4, 4))
    np.testing.assert_array_equal(lrp.unit_relevance(conv), np.full((2, 3), 16.0))
    tokens = np.ones((1, 3, 5))
    np.testing.assert_array_equal(lrp.unit_relevance(tokens, np.array([[1, 1, 0]])), np.full((1, 5), 2.0))


def test_dataset_relevance_is_cached_and_checks_the_model():
    m = models.load("zoo:mlp-s0")
    ds = data.load("digits", n=40)
    first = lrp.dataset_relevance(m, ds)
    again = lrp.dataset_relevance(m, ds)
    np.testing.assert_array_equal(first["relevance"], again["relevance"])
    direct = lrp.attribute(m, ds.inputs, "predicted")
    np.testing.assert_allclose(first["relevance"], direct.relevance, rtol=1e-6, atol=1e-7)
    with pytest.raises(UserInputError, match="classifier"):
        lrp.dataset_relevance(models.load("zoo:mlp-ae-b8"), ds)
    with pytest.raises(UserInputError, match="needs labels"):
        lrp.attribute(m, ds.inputs[:2], "true")


def test_uploaded_image_becomes_one_digits_row():
    import io

    from PIL import Image

    img = np.full((32, 32), 255, np.uint8)  # a dark stroke on white paper
    img[4:28, 14:18] = 0
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    row = lrp.image_from_upload(buf.getvalue(), "one.png")
    assert row.shape == (1, 64) and row.dtype == np.float32
    assert row.min() == 0 and row.max() == 1  # scaled to [0, 1], ink bright as in digits
    grid = row.reshape(8, 8)
    expected = np.zeros((8, 8))
    expected[1:7, 3:5] = 1  # rows 4..27 and columns 14..17 of 32, in blocks of 4
    np.testing.assert_array_equal(grid, expected)
    with pytest.raises(UserInputError, match="not an image"):
        lrp.image_from_upload(b"not a picture", "x.png")


def test_text_dataset_relevance_is_cached_and_agrees_with_itself(tiny_bert_dir):
    from analysis import data as data_mod

    m = models.load(f"hf:{tiny_bert_dir}")
    ds = data_mod.load("text", n=12)
    full = lrp.text_dataset_relevance(m, ds, batch_size=5)
    assert full["relevance"].shape == full["mask"].shape == full["ids"].shape and len(full["output"]) == 12
    again = lrp.text_dataset_relevance(m, ds, batch_size=5)
    np.testing.assert_array_equal(again["relevance"], full["relevance"])
    one = lrp.attribute(m, [ds.inputs[7]], lrp.fit_topic_probe(m, ds).target("predicted"))
    np.testing.assert_allclose(full["relevance"][7, : one.mask.shape[1]][one.mask[0]], one.input_relevance[0][one.mask[0]],
                               rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(lrp.text_agreement(full, full), 1.0)
    target = lrp.fit_topic_probe(m, ds).target("predicted")
    sentences = list(ds.inputs[:3])
    a = lrp.attribute(m, sentences, target)
    f = lrp.text_faithfulness(m, sentences, {"lrp": a.input_relevance}, target, steps=4)
    np.testing.assert_allclose(f.curves["lrp"][0], a.output.mean(), rtol=1e-4)  # nothing removed yet
    assert set(f.aopc) == {"lrp", "random"} and f.fractions[-1] == 1


def test_true_target_uses_labels_and_the_prediction_where_there_is_none():
    m = models.load("zoo:mlp-s0")
    ds = data.load("digits", n=8)
    labels = ds.labels.copy()
    labels[2] = -1  # e.g. an uploaded image
    a = lrp.attribute(m, ds.inputs, "true", labels=labels)
    pred = lrp.attribute(m, ds.inputs, "predicted").target
    np.testing.assert_array_equal(a.target, np.where(labels < 0, pred, labels))
    with torch.no_grad():
        logits = m.module(torch.as_tensor(ds.inputs)).numpy()
    np.testing.assert_allclose(a.output, logits[np.arange(8), a.target], rtol=1e-6)
