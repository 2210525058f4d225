"""The paper's architectures, with stable, documented layer names for NSR to hook.

Layer names follow the paper's numbering so that an experiment can say "NSR on layer 4 of MLP-4":

* ``mlp(depth)`` — MLP-L of appendix Table 1. The input is layer 1; ``layer2`` … ``layer{L-1}`` are the
  hidden layers (Linear → [BatchNorm] → ReLU; their output is the post-ReLU response) and ``layer{L}`` is the
  output layer (logits). Dropout, when asked for, is a separate module ``dropout{k}`` after hidden layer k,
  so the hooked response is not the dropped-out one.
* ``gnn(kind, depth, ...)`` — GCN / GraphSAGE with GNN-L hidden sizes of Table 1; ``layer1`` … ``layer{L}``
  (hidden layers post-ReLU, the last one the logits), called as ``model(x, adj)``.
* ``resnet18_cifar()`` — the CIFAR ResNet-18 (3×3 stem, no max-pool) the paper's CIFAR code uses; blocks
  ``layer1`` … ``layer4``, pooled feature ``pool`` (512-d), logits ``fc``.
* ``vgg19_cifar()`` — VGG-19 with BN for CIFAR of Liu et al. (2019); ``features``, pooled feature ``pool``,
  logits ``classifier``.
* ``lenet()`` — a LeNet-5-style CNN for 28×28 images: ``block1``, ``block2``, ``fc1``, ``fc2``, ``fc3`` (logits);
  dropout, when asked for, is ``dropout1`` / ``dropout2`` after ``fc1`` / ``fc2``.
* ``resnet50()`` — torchvision's ResNet-50 (``avgpool`` is the 2048-d feature the authors regularize, ``fc``
  the logits).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .graph import Adjacency

__all__ = ["MLP_HIDDEN", "GNN_HIDDEN", "mlp", "gnn", "GNN", "GCNLayer", "SAGELayer", "resnet18_cifar", "vgg19_cifar", "resnet50", "lenet", "count_parameters"]

#: Hidden layer sizes of appendix Table 1.
MLP_HIDDEN: dict[int, list[int]] = {
    3: [100],
    4: [256, 100],
    6: [256, 128, 64, 32],
    8: [256, 128, 64, 32, 32, 16],
    10: [256, 128, 64, 64, 32, 32, 16, 16],
}
GNN_HIDDEN: dict[int, list[int]] = {2: [100], 3: [256, 100], 4: [256, 128, 64]}


def mlp(
    depth: int,
    in_features: int = 784,
    num_classes: int = 10,
    batch_norm: bool = False,
    dropout: float = 0.0,
) -> nn.Sequential:
    """MLP-``depth`` (3, 4, 6, 8 or 10) of appendix Table 1; Xavier-normal weights and zero biases.

    Flattens its input, so it takes ``[B, 1, 28, 28]`` images as well as ``[B, 784]``.
    """
    if depth not in MLP_HIDDEN:
        raise ValueError(f"depth must be one of {sorted(MLP_HIDDEN)}, got {depth!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    sizes = [in_features, *MLP_HIDDEN[depth]]
    modules: OrderedDict[str, nn.Module] = OrderedDict(flatten=nn.Flatten())
    for k, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:]), start=2):
        block: OrderedDict[str, nn.Module] = OrderedDict(linear=nn.Linear(fan_in, fan_out))
        if batch_norm:
            block["bn"] = nn.BatchNorm1d(fan_out)
        block["relu"] = nn.ReLU()
        modules[f"layer{k}"] = nn.Sequential(block)
        if dropout > 0:
            modules[f"dropout{k}"] = nn.Dropout(dropout)
    modules[f"layer{depth}"] = nn.Linear(sizes[-1], num_classes)
    model = nn.Sequential(modules)
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.xavier_normal_(module.weight)
            nn.init.zeros_(module.bias)
    return model


class SAGELayer(nn.Module):
    """GraphSAGE mean-aggregation layer, ``W_r x_i + W_l mean_{j in N(i)} x_j + b`` (PyG's ``SAGEConv``).

    Mean aggregation commutes with the linear map, so when the layer narrows (``out < in``) the neighbours
    are projected first and the (cheaper) aggregation runs at the output width. Outputs are identical to
    ``torch_geometric.nn.SAGEConv`` with the same weights (tested); ``adj`` is an ``edge_index``, a sparse
    (CSR) adjacency ``adj_t`` with ``adj_t[i, j] = 1`` for an edge j → i, or an :class:`nsr.graph.Adjacency`
    (fastest).
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        from torch_geometric.nn import SAGEConv

        self.conv = SAGEConv(in_channels, out_channels)
        self.project_first = out_channels < in_channels

    def forward(self, x: Tensor, adj: Tensor) -> Tensor:
        conv = self.conv
        fast = isinstance(adj, Adjacency)
        if not self.project_first:
            if not fast:
                return conv(x, adj)
            return conv.lin_l(adj.mean(x)) + conv.lin_r(x)
        # one GEMM for both linear maps: [x W_l^T | x W_r^T]
        both = F.linear(x, torch.cat((conv.lin_l.weight, conv.lin_r.weight)))
        projected, root = both.split(conv.out_channels, dim=1)
        out = adj.mean(projected) if fast else conv.propagate(adj, x=(projected, projected), size=None)
        if conv.lin_l.bias is not None:
            out = out + conv.lin_l.bias
        return out + root


class GCNLayer(nn.Module):
    """``torch_geometric.nn.GCNConv``, propagated through a precomputed :class:`nsr.graph.Adjacency` when given one."""

    def __init__(self, in_channels: int, out_channels: int, cached: bool = True) -> None:
        super().__init__()
        from torch_geometric.nn import GCNConv

        self.conv = GCNConv(in_channels, out_channels, cached=cached)

    def forward(self, x: Tensor, adj: Tensor) -> Tensor:
        if not isinstance(adj, Adjacency):
            return self.conv(x, adj)
        out = adj.gcn(self.conv.lin(x))
        return out + self.conv.bias if self.conv.bias is not None else out


class GNN(nn.Module):
    """A stack of graph convolutions ``layer1`` … ``layerL`` with ReLU and dropout between layers.

    ``dropout`` applies to the hidden representations; ``input_dropout`` to the node features (off by
    default: on a 13k × 767 feature matrix drawing the mask costs more than the whole rest of a CPU step).
    """

    def __init__(self, layers: list[nn.Module], dropout: float, input_dropout: float = 0.0) -> None:
        super().__init__()
        for k, layer in enumerate(layers, start=1):
            self.add_module(f"layer{k}", layer)
        self.depth = len(layers)
        self.dropout = dropout
        self.input_dropout = input_dropout

    def forward(self, x: Tensor, adj: Tensor) -> Tensor:
        for k in range(1, self.depth + 1):
            x = F.dropout(x, self.input_dropout if k == 1 else self.dropout, self.training)
            x = getattr(self, f"layer{k}")(x, adj)
        return x


class _Activated(nn.Module):
    """A graph convolution followed by ReLU, so that a hook on it sees the post-activation response."""

    def __init__(self, conv: nn.Module) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: Tensor, adj: Tensor) -> Tensor:
        return F.relu(self.conv(x, adj))


def gnn(
    kind: Literal["gcn", "sage"],
    depth: int,
    in_channels: int,
    num_classes: int,
    dropout: float = 0.5,
    input_dropout: float = 0.0,
    cached: bool = True,
) -> GNN:
    """GCN or GraphSAGE with ``depth`` (2, 3, 4) layers and the GNN-``depth`` hidden sizes of Table 1.

    ``cached=True`` lets GCN compute its normalised adjacency once (right for transductive training on one
    fixed graph; pass ``False`` to feed different graphs).
    """
    if depth not in GNN_HIDDEN:
        raise ValueError(f"depth must be one of {sorted(GNN_HIDDEN)}, got {depth!r}")
    if kind not in ("gcn", "sage"):
        raise ValueError(f"kind must be 'gcn' or 'sage', got {kind!r}")
    sizes = [in_channels, *GNN_HIDDEN[depth], num_classes]
    layers: list[nn.Module] = []
    for k, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
        conv: nn.Module = GCNLayer(fan_in, fan_out, cached) if kind == "gcn" else SAGELayer(fan_in, fan_out)
        layers.append(conv if k == depth else _Activated(conv))
    return GNN(layers, dropout, input_dropout)


# ----------------------------------------------------------------------------- CNNs
class _BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNetCIFAR(nn.Module):
    """ResNet for 32×32 inputs (He et al. 2016, CIFAR variant): 3×3 stem, four stages, global pooling."""

    def __init__(self, blocks: tuple[int, ...] = (2, 2, 2, 2), num_classes: int = 10, width: int = 64, in_channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        planes, in_planes = width, width
        for stage, count in enumerate(blocks, start=1):
            stride = 1 if stage == 1 else 2
            layers = []
            for s in [stride] + [1] * (count - 1):
                layers.append(_BasicBlock(in_planes, planes, s))
                in_planes = planes
            self.add_module(f"layer{stage}", nn.Sequential(*layers))
            planes *= 2
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(in_planes, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.fc(self.pool(out))


def resnet18_cifar(num_classes: int = 10, width: int = 64, in_channels: int = 3) -> ResNetCIFAR:
    """CIFAR ResNet-18; ``width`` < 64 gives the reduced-width variant used on CPU."""
    return ResNetCIFAR((2, 2, 2, 2), num_classes, width, in_channels)


_VGG19 = [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512]


class VGGCIFAR(nn.Module):
    """VGG-19 with BatchNorm for CIFAR (Liu et al., "Rethinking the value of network pruning", 2019)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for v in _VGG19:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(channels, int(v), 3, padding=1, bias=False), nn.BatchNorm2d(int(v)), nn.ReLU(inplace=True)]
                channels = int(v)
        self.features = nn.Sequential(*layers)
        self.pool = nn.Sequential(nn.AvgPool2d(2), nn.Flatten())
        self.classifier = nn.Linear(channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 0.5)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.features(x)))


def vgg19_cifar(num_classes: int = 10, in_channels: int = 3) -> VGGCIFAR:
    """VGG-19 (BN) for 32×32 inputs of Liu et al. (2019), the variant the paper cites."""
    return VGGCIFAR(num_classes, in_channels)


def resnet50(num_classes: int = 1000) -> nn.Module:
    """torchvision ResNet-50 (random init); layer ``avgpool`` is the 2048-d feature, ``fc`` the logits."""
    from torchvision.models import resnet50 as tv_resnet50

    return tv_resnet50(weights=None, num_classes=num_classes)


def lenet(num_classes: int = 10, in_channels: int = 1, dropout: float = 0.0) -> nn.Sequential:
    """LeNet-5-style CNN for 28×28 images (the CPU-scale CNN of the CNN chapter).

    ``block1`` (conv 5×5, 6 maps, padding 2, ReLU, 2×2 max-pool), ``block2`` (conv 5×5, 16 maps, ReLU, max-pool),
    ``fc1`` (400 → 120, ReLU), ``fc2`` (120 → 84, ReLU), ``fc3`` (84 → classes, logits). ``dropout`` > 0 adds
    ``dropout1`` / ``dropout2`` after ``fc1`` / ``fc2`` (the classifier, as in AlexNet/VGG), separate modules so a
    hooked response is never the dropped-out one; with ``dropout=0`` the model is unchanged.
    """
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    modules: OrderedDict[str, nn.Module] = OrderedDict(
        block1=nn.Sequential(nn.Conv2d(in_channels, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2)),
        block2=nn.Sequential(nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2)),
        flatten=nn.Flatten(),
        fc1=nn.Sequential(nn.Linear(16 * 5 * 5, 120), nn.ReLU()),
    )
    if dropout > 0:
        modules["dropout1"] = nn.Dropout(dropout)
    modules["fc2"] = nn.Sequential(nn.Linear(120, 84), nn.ReLU())
    if dropout > 0:
        modules["dropout2"] = nn.Dropout(dropout)
    modules["fc3"] = nn.Linear(84, num_classes)
    return nn.Sequential(modules)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
