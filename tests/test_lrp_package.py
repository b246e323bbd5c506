"""analysis.lrp as a package (issue #15): a new rule is one registered class, the names the library
always offered still work, and the cost model counts a forward pass's work exactly."""
import numpy as np
import pytest
import torch
from torch import nn

from analysis import lrp
from analysis.errors import UserInputError
from analysis.lrp import cost


class AbsShare(lrp.Rule):
    """Each input takes the share |a_j w_jk| / sum_j |a_j w_jk| of an output's relevance: a rule no
    LRP paper names, so nothing but its class can make it work."""

    name = "abs-share"
    description = "each input's share of |a w|"

    def gradient(self, layer, rs):
        s = layer.r / lrp.stabilize(layer.fwd(layer.a.abs(), layer.w.abs()), rs.epsilon)
        return torch.sign(layer.a) * layer.vjp(layer.w.abs(), s)


@pytest.fixture
def abs_share():
    lrp.register_rule(AbsShare)
    yield AbsShare
    lrp.unregister_rule(AbsShare.name)


def test_registering_a_rule_class_is_enough_to_use_it(abs_share):
    """One unit, w = (2, -1, 0.5), b = 0.5, a = (1, 0.5, -2): z = 1 and |a w| = (2, 0.5, 1), so the
    rule gives R = (2, 0.5, 1) / 3.5 by hand."""
    lin = nn.Linear(3, 1).double()
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[2.0, -1.0, 0.5]]))
        lin.bias.copy_(torch.tensor([0.5]))
    x = torch.tensor([[1.0, 0.5, -2.0]], dtype=torch.float64)
    a = lrp.attribute(lin, x, 0, rule="abs-share", epsilon=0.0)
    np.testing.assert_allclose(a.relevance[0], np.array([2.0, 0.5, 1.0]) / 3.5, rtol=1e-12)
    assert a.rule == "abs-share" and a.description.startswith("each input's share of |a w|.")
    # every list of rules knows it: the library's, the page's choices, a share link
    assert "abs-share" in lrp.RULES and lrp.DESCRIPTIONS["abs-share"] == AbsShare.description
    assert "abs-share" in lrp.BIAS_RULES and "abs-share" not in lrp.FIRST_LAYER_RULES
    from analysis.spec import AnalysisSpec
    from analysis.views import attributions

    assert "abs-share" in {p.key: p for p in attributions.PARAMS}["at_rule"].options()
    assert AnalysisSpec.from_query("attributions", {"at_rule": "abs-share"}, strict=True)[0].params["at_rule"] == \
        "abs-share"
    # it conserves on a bias-free ReLU MLP (each layer passes on all it receives), as a rule should
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8, bias=False), nn.ReLU(), nn.Linear(8, 3, bias=False)).double().eval()
    x = torch.randn(5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    np.testing.assert_allclose(lrp.attribute(net, x, 1, rule="abs-share", epsilon=0.0).conservation, 1.0, rtol=1e-10)


def test_a_composite_can_name_a_new_rule_and_names_are_never_shadowed(abs_share):
    class AbsDense(lrp.Composite):
        name, description = "abs-dense", "abs-share on dense layers, z+ on convolutions"
        first, conv, dense = "abs-share", "zplus", "abs-share"

    lrp.register_composite(AbsDense)
    try:
        rs = lrp.rule_set(composite="abs-dense")
        assert (rs.first, rs.conv, rs.dense) == ("abs-share", "zplus", "abs-share")
        assert "abs-dense" in lrp.COMPOSITES
    finally:
        lrp.composites.REGISTRY.pop("abs-dense")

    class Other(AbsShare):
        pass

    with pytest.raises(ValueError, match="exists already"):
        lrp.register_rule(Other)  # the same name under another class
    with pytest.raises(UserInputError, match="Unknown LRP rule"):
        lrp.rule_set("no-such-rule")


def test_the_library_names_still_work():
    assert lrp.RULES == ("epsilon", "gamma", "zplus", "alpha-beta", "flat", "w2", "box")
    assert lrp.COMPOSITES == ("epsilon-plus-flat", "epsilon-gamma-box")
    assert lrp.FIRST_LAYER_RULES == ("flat", "w2", "box")
    assert lrp.BIAS_RULES == ("epsilon", "gamma", "zplus", "alpha-beta", "w2")
    assert set(lrp.DESCRIPTIONS) == set(lrp.RULES + lrp.COMPOSITES)
    # functions, not the modules of the same name
    for name in ("faithfulness", "attribute", "fit_topic_probe", "explain_similarity", "dataset_relevance"):
        assert callable(getattr(lrp, name)), name
    assert set(lrp.BIAS_CONVENTIONS) == {True, False}


def test_the_cost_model_counts_each_layers_work_exactly(monkeypatch):
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).eval()
    assert cost.layer_flops(mlp, np.zeros((1, 64), np.float32)) == [(False, 2.0 * 64 * 32), (False, 2.0 * 32 * 10)]
    cnn = nn.Sequential(nn.Unflatten(1, (1, 8, 8)), nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(),
                        nn.Conv2d(4, 6, 3, padding=1, groups=2), nn.Flatten(), nn.Linear(384, 10)).eval()
    layers = cost.layer_flops(cnn, np.zeros((1, 64), np.float32))
    assert layers == [(True, 2.0 * 4 * 64 * 9), (True, 2.0 * 6 * 64 * 2 * 9), (False, 2.0 * 384 * 10)]
    # a rule's passes scale its layers' work: forward + 8 passes (gamma) against forward + 1 (epsilon)
    monkeypatch.setattr(cost, "BATCH_OVERHEAD_S", 0.0)
    monkeypatch.setattr(cost, "LAYER_PASS_S", 0.0)
    eps, gamma = (cost.attribution_seconds(layers, 1000, lrp.rule_set(r)) for r in ("epsilon", "gamma"))
    assert gamma / eps == pytest.approx(9 / 2)
    # input-domain rules only on the first layer: box (6 passes) there, epsilon above
    box = cost.attribution_seconds(layers, 1000, lrp.rule_set("box"))
    flops = [f for _, f in layers]
    assert box / eps == pytest.approx((7 * flops[0] + 2 * (flops[1] + flops[2])) / (2 * sum(flops)))


def test_without_biases_only_units_with_all_zero_inputs_keep_relevance():
    """zennit's zero_params='bias' passes on all relevance except that of units whose inputs are all
    zero (a convolution over blank background): active through their bias alone, their relevance has
    no input to go to. The input relevance plus exactly that relevance is the explained output."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    net = nn.Sequential(nn.Unflatten(1, (1, 6, 6)), nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(),
                        nn.Linear(108, 4)).double().eval()
    with torch.no_grad():
        net[1].bias.copy_(torch.tensor([0.3, 0.2, 0.4]))  # positive: bias-only units are active
    x = torch.zeros(3, 36, dtype=torch.float64)
    x[:, 14:16] = torch.rand(3, 2, generator=torch.Generator().manual_seed(1)) + 0.5  # ink in the middle only
    a = lrp.attribute(net, x, 1, rule="epsilon", epsilon=1e-12, bias=False, layer="1")
    zero_input = F.conv2d(x.reshape(-1, 1, 6, 6), net[1].weight, None, padding=1).abs() < 1e-15
    lost = (a.layer_relevance * zero_input.numpy()).reshape(3, -1).sum(1)
    assert np.abs(lost).min() > 1e-3  # the blank border does hold relevance here
    np.testing.assert_allclose(a.relevance_sum + lost, a.output, rtol=1e-9)
    assert a.description.endswith(lrp.BIAS_CONVENTIONS[False]) and "all zero" in a.description
