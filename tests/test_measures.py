"""Intra-class variance, aggregated variance, the complexity measure and layer selection."""

from __future__ import annotations

import pytest
import torch
from sklearn.metrics import davies_bouldin_score

from nsr import aggregated_variance, consistency_of_representations, intra_class_variance, models, select_layer
from nsr.measures import ClassMoments, consistency_terms


def test_intra_class_variance_equals_torch_var():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 3, 2, generator=g) * 5 + 100
    y = torch.randint(0, 3, (50,), generator=g)
    got = intra_class_variance(x, y, 5)
    assert got.shape == (5, 6)
    for j in range(3):
        want = torch.var(x[y == j].reshape(-1, 6), dim=0, unbiased=False)
        assert torch.allclose(got[j], want, rtol=1e-5)
    assert torch.equal(got[3:], torch.zeros(2, 6))


def test_aggregated_variance_formula():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(40, 4, generator=g).double()
    y = torch.randint(0, 3, (40,), generator=g)
    want = sum((y == j).sum() / 40 * torch.var(x[y == j], 0, unbiased=False).sum() for j in range(3))
    assert aggregated_variance(x, y, 3) == pytest.approx(float(want))


def test_streaming_moments_equal_one_pass():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(90, 5, generator=g) + 1000
    y = torch.randint(0, 4, (90,), generator=g)
    m = ClassMoments(4)
    for i in range(0, 90, 17):
        m.update(x[i : i + 17], y[i : i + 17])
    assert torch.allclose(m.variance().float(), intra_class_variance(x, y, 4), rtol=1e-4)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_consistency_equals_davies_bouldin(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(60, 7, generator=g) + torch.randint(0, 3, (60, 1), generator=g) * 2.0
    y = torch.randint(0, 4, (60,), generator=g)
    assert consistency_of_representations(x, y) == pytest.approx(davies_bouldin_score(x.double().numpy(), y.numpy()), rel=1e-9)


def test_consistency_zero_when_classes_collapse():
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    x = torch.eye(3)[y] * torch.tensor([1.0, 2.0, 3.0])
    assert consistency_of_representations(x, y) == 0.0
    scatter, separation = consistency_terms(x, y)
    assert torch.equal(scatter, torch.zeros(3)) and separation[0, 1] > 0


def test_consistency_needs_two_classes():
    with pytest.raises(ValueError, match="at least 2 classes"):
        consistency_of_representations(torch.rand(4, 2), torch.zeros(4, dtype=torch.long))


def test_measures_validate_input():
    with pytest.raises(ValueError, match="labels must lie"):
        intra_class_variance(torch.rand(3, 2), torch.tensor([0, 1, 3]), 3)
    with pytest.raises(TypeError, match="integer"):
        aggregated_variance(torch.rand(3, 2), torch.rand(3), 3)
    with pytest.raises(ValueError, match="same batch size"):
        intra_class_variance(torch.rand(3, 2), torch.tensor([0, 1]), 3)


def test_select_layer_picks_largest_variance():
    torch.manual_seed(0)
    model = models.mlp(4)
    x, y = torch.rand(64, 784), torch.randint(0, 10, (64,))
    with torch.no_grad():  # make the logits' variance the largest
        model.layer4.weight.mul_(50)
    name, variances = select_layer(model, (x, y), ["layer2", "layer3", "layer4"], 10)
    assert name == "layer4" and set(variances) == {"layer2", "layer3", "layer4"}
    h2 = model.layer2(model.flatten(x))
    assert variances["layer2"] == pytest.approx(aggregated_variance(h2, y, 10), rel=1e-6)
    batched = [(x[:30], y[:30]), (x[30:], y[30:])]
    assert select_layer(model, batched, ["layer2"], 10)[1]["layer2"] == pytest.approx(variances["layer2"], rel=1e-6)
    assert model.training  # restored


def test_select_layer_unknown_name():
    with pytest.raises(ValueError, match="available layers"):
        select_layer(models.mlp(3), (torch.rand(2, 784), torch.tensor([0, 1])), ["nope"], 10)
