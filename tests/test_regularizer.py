"""NeuronSteadiness against a direct loop implementation of the formula, and its contract."""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision

from nsr import NeuronSteadiness, models


def reference_penalties(batches, num_classes, queue_length, weight):
    """The issue's formula, written as plain loops over batches, classes, samples and neurons."""
    queue = []  # list of (sums [J][N], counts [J]) of the last M batches, the current one included
    out = []
    for responses, labels in batches:
        flat = responses.reshape(len(labels), -1).double()
        B, N = flat.shape
        sums = [[0.0] * N for _ in range(num_classes)]
        counts = [0] * num_classes
        for b in range(B):
            j = int(labels[b])
            counts[j] += 1
            for n in range(N):
                sums[j][n] += float(flat[b, n])
        queue.append((sums, counts))
        queue = queue[-queue_length:]
        total = 0.0
        for b in range(B):
            j = int(labels[b])
            count = sum(c[j] for _, c in queue)
            for n in range(N):
                mu = sum(s[j][n] for s, _ in queue) / count
                total += (float(flat[b, n]) - mu) ** 2
        out.append(weight * total / (B * N))
    return out


def make_batches(seed, sizes, num_classes, shape, missing=()):
    g = torch.Generator().manual_seed(seed)
    batches = []
    for i, B in enumerate(sizes):
        labels = torch.randint(0, num_classes, (B,), generator=g)
        if i in missing:  # force some classes to be absent from this batch
            labels = labels % 2
        batches.append((torch.randn(B, *shape, generator=g) * 3 + 1, labels))
    return batches


@pytest.mark.parametrize("queue_length", [1, 2, 3, 5])
def test_penalty_matches_loop_reference(queue_length):
    batches = make_batches(0, [7, 5, 9, 4, 6, 8, 5, 7], 4, (3, 2), missing={1, 4})
    reg = NeuronSteadiness(4, queue_length, weight=0.7)
    got = [float(reg(o, y)) for o, y in batches]
    want = reference_penalties(batches, 4, queue_length, 0.7)
    assert got == pytest.approx(want, rel=1e-5)
    assert reg.filled == min(queue_length, len(batches))


def test_long_run_totals_stay_exact():
    reg = NeuronSteadiness(3, 4)
    batches = make_batches(1, [16] * 203, 3, (5,))
    for o, y in batches:
        reg(o * 1000, y)
    exact = torch.stack([reg.queue[m] for m in range(4)]).double().sum(0)
    assert torch.allclose(reg.totals.double(), exact, rtol=1e-6)
    last = batches[-4:]
    want = reference_penalties([(o * 1000, y) for o, y in last], 3, 4, 1.0)[-1]
    assert float(reg(*[t * (1000 if i == 0 else 1) for i, t in enumerate(batches[-1])])) != 0
    reg2 = NeuronSteadiness(3, 4)
    for o, y in last:
        value = reg2(o * 1000, y)
    assert float(value) == pytest.approx(want, rel=1e-5)


def test_gradient_gradcheck_and_centroids_constant():
    reg = NeuronSteadiness(3, 2, weight=1.3)
    for o, y in make_batches(2, [6, 5], 3, (4,)):
        reg(o, y)
    o, y = make_batches(3, [6], 3, (4,))[0]
    o = o.double().requires_grad_()

    # In training mode the current batch enters the centroids but is detached there, so finite differences
    # would see a dependence the (intended) gradient ignores: check the gradient in eval mode, where the
    # centroids come from the queue alone, and the training-mode gradient against its closed form.
    frozen = copy.deepcopy(reg).eval()
    assert torch.autograd.gradcheck(lambda x: frozen(x, y), (o,))
    # closed form: the centroids are constants
    clone = copy.deepcopy(reg)
    loss = clone(o, y)
    loss.backward()
    mu = clone.centroids().double()
    expected = 1.3 * 2 * (o.detach() - mu[y]) / o.numel()
    assert torch.allclose(o.grad, expected, atol=1e-6)


def test_state_dict_round_trip_and_buffers():
    batches = make_batches(4, [8, 6, 7, 9, 5], 3, (4,))
    reg = NeuronSteadiness(3, 3)
    for o, y in batches[:3]:
        reg(o, y)
    state = reg.state_dict()
    assert {"queue", "totals"} <= set(state)
    fresh = NeuronSteadiness(3, 3)
    fresh.load_state_dict(state)
    assert fresh.filled == reg.filled
    for o, y in batches[3:]:
        assert float(fresh(o, y)) == pytest.approx(float(reg(o, y)), rel=1e-6)
    names = {name for name, _ in reg.named_buffers()}
    assert names == {"queue", "totals"}
    moved = reg.to(torch.device("cpu"))
    assert moved.queue.device.type == "cpu"


def test_eval_mode_leaves_queue_unchanged():
    reg = NeuronSteadiness(3, 2)
    batches = make_batches(5, [8, 8, 8], 3, (4,))
    reg(*batches[0])
    before = copy.deepcopy(reg.state_dict())
    reg.eval()
    value = reg(*batches[1])
    assert value > 0
    after = reg.state_dict()
    for key in ("queue", "totals"):
        assert torch.equal(before[key], after[key])
    assert after["_extra_state"] == before["_extra_state"]


def test_reset_empties_queue():
    reg = NeuronSteadiness(3, 2)
    reg(*make_batches(6, [8], 3, (4,))[0])
    reg.reset()
    assert reg.filled == 0 and float(reg.totals.abs().sum()) == 0


def test_autocast_accumulates_in_float32():
    reg = NeuronSteadiness(3, 2)
    ref = NeuronSteadiness(3, 2)
    o, y = make_batches(7, [16], 3, (8,))[0]
    low = o.bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = reg(low, y)
    assert value.dtype == torch.float32 and reg.queue.dtype == torch.float32
    assert float(value) == pytest.approx(float(ref(low.float(), y)), rel=1e-6)


def test_attach_on_mlp_resnet_and_gnn():
    torch.manual_seed(0)
    x, y = torch.rand(12, 1, 28, 28), torch.randint(0, 10, (12,))
    mlp = models.mlp(4)
    reg = NeuronSteadiness(10)
    handle = reg.attach(mlp, "layer3")
    out = mlp(x)
    value = reg.penalty(y)
    direct = NeuronSteadiness(10)(mlp.layer3(mlp.layer2(mlp.flatten(x))), y)
    assert float(value) == pytest.approx(float(direct), rel=1e-6)
    (out.sum() + value).backward()
    handle.remove()
    with pytest.raises(RuntimeError):
        NeuronSteadiness(10).penalty(y)

    resnet = torchvision.models.resnet18(num_classes=10)
    reg = NeuronSteadiness(10, weight=0.5)
    reg.attach(resnet, "layer4.1")
    resnet(torch.rand(4, 3, 32, 32))
    assert reg.responses.shape == (4, 512, 1, 1)
    reg.penalty(y[:4]).backward()
    assert resnet.layer4[1].conv2.weight.grad is not None

    gnn = models.gnn("gcn", 2, 5, 3)
    edge_index = torch.tensor([[0, 1, 1, 2, 2, 3, 3, 4], [1, 0, 2, 1, 3, 2, 4, 3]])
    reg = NeuronSteadiness(3)
    reg.attach(gnn, "layer1")
    gnn(torch.rand(5, 5), edge_index)
    mask = torch.tensor([True, True, False, True, False])
    labels = torch.tensor([0, 1, 2, 1, 0])
    value = reg.penalty(labels, mask)
    direct = NeuronSteadiness(3)(reg.responses[mask], labels[mask])
    assert float(value) == pytest.approx(float(direct))


def test_unknown_layer_lists_names():
    with pytest.raises(ValueError, match="layer9.*available layers.*layer2"):
        NeuronSteadiness(10).attach(models.mlp(4), "layer9")


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda o, y: (o, torch.tensor([0, 1, 2, 5])), ValueError, "labels must lie"),
        (lambda o, y: (o, torch.tensor([0, 1, -1, 2])), ValueError, "labels must lie"),
        (lambda o, y: (o, y.float()), TypeError, "labels"),
        (lambda o, y: (o, y[:, None]), ValueError, "labels must be 1-d"),
        (lambda o, y: (o, y[:3]), ValueError, "same batch size"),
        (lambda o, y: (o[:, :3], y), ValueError, "features"),
        (lambda o, y: (o.masked_fill(o > 1, float("nan")), y), ValueError, "NaN or infinite"),
        (lambda o, y: (o.masked_fill(o > 1, float("inf")), y), ValueError, "NaN or infinite"),
        (lambda o, y: (o[:0], y[:0]), ValueError, "empty"),
        (lambda o, y: (o.long(), y), TypeError, "floating-point"),
    ],
)
def test_bad_input_raises_and_leaves_queue(make, error, match):
    reg = NeuronSteadiness(3, 2)
    o = torch.rand(4, 4) + 0.5
    o[0, 0] = 2.0
    y = torch.tensor([0, 1, 2, 1])
    reg(o, y)
    before = copy.deepcopy(reg.state_dict())
    with pytest.raises(error, match=match):
        reg(*make(o, y))
    after = reg.state_dict()
    assert torch.equal(before["queue"], after["queue"]) and torch.equal(before["totals"], after["totals"])
    assert before["_extra_state"] == after["_extra_state"]


@pytest.mark.parametrize(
    "kwargs, match",
    [({"num_classes": 1}, "num_classes"), ({"num_classes": 3, "queue_length": 0}, "queue_length"),
     ({"num_classes": 3, "weight": -1.0}, "weight"), ({"num_classes": 3, "weight": float("nan")}, "weight")],
)
def test_bad_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        NeuronSteadiness(**kwargs)


def test_mask_of_wrong_length():
    mlp = models.mlp(3)
    reg = NeuronSteadiness(10)
    reg.attach(mlp, "layer3")
    mlp(torch.rand(6, 784))
    with pytest.raises(ValueError, match="mask"):
        reg.penalty(torch.zeros(6, dtype=torch.long), torch.ones(5, dtype=torch.bool))
    with pytest.raises(TypeError, match="mask"):
        reg.penalty(torch.zeros(6, dtype=torch.long), torch.ones(6))


def test_penalty_before_forward():
    reg = NeuronSteadiness(10)
    reg.attach(models.mlp(3), "layer3")
    with pytest.raises(RuntimeError, match="run the model forward first"):
        reg.penalty(torch.zeros(3, dtype=torch.long))


@pytest.mark.slow
def test_torch_compile_keeps_the_penalty():
    torch.manual_seed(0)
    model = models.mlp(3, in_features=20, num_classes=4)
    compiled = torch.compile(model)
    x, y = torch.randn(32, 20), torch.arange(32) % 4
    eager_reg, compiled_reg = NeuronSteadiness(4, 2), NeuronSteadiness(4, 2)
    eager_reg.attach(model, "layer3")
    compiled_reg.attach(compiled, "_orig_mod.layer3")
    for _ in range(3):
        model(x)
        eager = eager_reg.penalty(y)
        compiled(x)
        value = compiled_reg.penalty(y)
        assert float(value) == pytest.approx(float(eager), rel=1e-5)
    value.backward()
