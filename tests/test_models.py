"""Architectures of appendix Table 1 and the CNNs, with their documented layer names."""

from __future__ import annotations

import pytest
import torch
from torch_geometric.nn import SAGEConv
from torch_geometric.utils import coalesce, to_torch_csr_tensor

from nsr import models


@pytest.mark.parametrize("depth", [3, 4, 6, 8, 10])
def test_mlp_sizes_names_and_init(depth):
    model = models.mlp(depth)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in linears] == models.MLP_HIDDEN[depth] + [10]
    assert all(float(m.bias.abs().sum()) == 0 for m in linears)
    names = [n for n, _ in model.named_children()]
    assert names == ["flatten"] + [f"layer{k}" for k in range(2, depth + 1)]
    assert model(torch.rand(3, 1, 28, 28)).shape == (3, 10)


def test_mlp_options_and_errors():
    model = models.mlp(4, batch_norm=True, dropout=0.2)
    assert isinstance(model.layer2.bn, torch.nn.BatchNorm1d) and isinstance(model.dropout2, torch.nn.Dropout)
    with pytest.raises(ValueError, match="depth"):
        models.mlp(5)


def test_sage_layer_equals_pyg_sageconv():
    torch.manual_seed(0)
    edge_index = coalesce(torch.randint(0, 30, (2, 80)))  # real graphs have no duplicate edges
    x = torch.randn(30, 16)
    layer = models.SAGELayer(16, 4)
    reference = SAGEConv(16, 4)
    reference.load_state_dict(layer.conv.state_dict())
    adj_t = to_torch_csr_tensor(edge_index.flip(0), size=(30, 30))
    want = reference(x, edge_index)
    assert torch.allclose(layer(x, edge_index), want, atol=1e-5)
    assert torch.allclose(layer(x, adj_t), want, atol=1e-5)


@pytest.mark.parametrize("kind", ["gcn", "sage"])
@pytest.mark.parametrize("depth", [2, 3, 4])
def test_gnn_shapes(kind, depth):
    model = models.gnn(kind, depth, 8, 3)
    edge_index = torch.tensor([[0, 1, 1, 2], [1, 0, 2, 1]])
    out = model(torch.rand(3, 8), edge_index)
    assert out.shape == (3, 3)
    assert [n for n, _ in model.named_children()] == [f"layer{k}" for k in range(1, depth + 1)]


def test_cnns_forward_and_names():
    r = models.resnet18_cifar(width=8)
    assert r(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    assert r.pool(r.layer4(r.layer3(r.layer2(r.layer1(torch.relu(r.bn1(r.conv1(torch.rand(2, 3, 32, 32))))))))).shape == (2, 64)
    assert models.count_parameters(models.resnet18_cifar()) == pytest.approx(11.17e6, rel=0.01)
    v = models.vgg19_cifar()
    assert v(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    assert models.count_parameters(v) == pytest.approx(20.04e6, rel=0.01)
    assert models.resnet50(num_classes=10)(torch.rand(1, 3, 64, 64)).shape == (1, 10)


def test_fast_adjacency_matches_pyg_layers_and_gradients():
    from torch_geometric.nn import GCNConv

    from nsr.graph import Adjacency

    torch.manual_seed(1)
    edge_index = coalesce(torch.randint(0, 40, (2, 150)))
    edge_index = torch.cat([edge_index, edge_index.flip(0)], 1).unique(dim=1)  # undirected, with some self-loops
    x = torch.randn(40, 12, requires_grad=True)
    adj = Adjacency(edge_index, 40)
    def same_outputs_and_gradients(ours, reference):
        reference.load_state_dict(ours.conv.state_dict())
        a, b = ours(x, adj), reference(x, edge_index)
        assert torch.allclose(a, b, atol=1e-5)
        ga = torch.autograd.grad(a.square().sum(), x)[0]
        gb = torch.autograd.grad(b.square().sum(), x)[0]
        assert torch.allclose(ga, gb, atol=1e-4)

    for out_channels in (4, 20):  # projecting first, and not
        same_outputs_and_gradients(models.SAGELayer(12, out_channels), SAGEConv(12, out_channels))
    same_outputs_and_gradients(models.GCNLayer(12, 5), GCNConv(12, 5))


def test_lenet_dropout_is_applied_and_off_by_default():
    torch.manual_seed(0)
    plain = models.lenet()
    assert [n for n, _ in plain.named_children()] == ["block1", "block2", "flatten", "fc1", "fc2", "fc3"]
    torch.manual_seed(0)
    dropped = models.lenet(dropout=0.5)
    assert [n for n, _ in dropped.named_children()] == ["block1", "block2", "flatten", "fc1", "dropout1", "fc2", "dropout2", "fc3"]
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), dropped.state_dict().values()))
    x = torch.rand(8, 1, 28, 28)
    dropped.eval()
    assert torch.equal(plain(x), dropped(x))  # eval: the same network
    dropped.train()
    torch.manual_seed(1)
    assert not torch.allclose(plain(x), dropped(x))  # training: units are dropped
    with pytest.raises(ValueError, match="dropout"):
        models.lenet(dropout=1.0)
