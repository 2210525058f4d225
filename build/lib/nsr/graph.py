"""Fast full-batch message passing on one fixed graph (transductive node classification).

:class:`Adjacency` precomputes, once per graph, the two sparse operators the paper's GNNs need — the mean
aggregation of GraphSAGE, ``D_in^-1 A``, and GCN's ``D^-1/2 (A + I) D^-1/2`` (as ``torch_geometric``'s
``gcn_norm`` builds it) — as CSR matrices together with their transposes. A custom autograd function uses
the stored transpose in the backward pass, where PyTorch's generic sparse backward would convert, sort and
transpose the matrix again at every step. The layers of :mod:`nsr.models` use it when they receive an
``Adjacency`` and fall back to ``torch_geometric`` message passing for an ``edge_index``; outputs agree (tested).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["Adjacency"]


class _SparseMatmul(torch.autograd.Function):
    """``A @ x`` for a constant CSR matrix ``A`` whose transpose is precomputed."""

    @staticmethod
    def forward(ctx: Any, matrix: Tensor, transposed: Tensor, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.transposed = transposed
        return matrix @ x

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[None, None, Tensor]:  # type: ignore[override]
        return None, None, ctx.transposed @ grad


def _csr(row: Tensor, col: Tensor, value: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """CSR matrix with entries (row, col, value) and its transpose, both CSR."""
    coo = torch.sparse_coo_tensor(torch.stack([row, col]), value, (n, n), check_invariants=False).coalesce()
    return coo.to_sparse_csr(), coo.t().coalesce().to_sparse_csr()


class Adjacency:
    """Sparse propagation operators of a graph with ``edge_index`` (messages flow ``edge_index[0] → [1]``)."""

    def __init__(self, edge_index: Tensor, num_nodes: int) -> None:
        if edge_index.dim() != 2 or edge_index.shape[0] != 2:
            raise ValueError(f"edge_index must have shape [2, E], got {tuple(edge_index.shape)}")
        self.num_nodes = num_nodes
        self.edge_index = edge_index
        src, dst = edge_index[0], edge_index[1]
        ones = torch.ones(src.numel())
        in_degree = torch.zeros(num_nodes).index_add_(0, dst, ones)
        self._mean = _csr(dst, src, 1.0 / in_degree.clamp_min(1)[dst], num_nodes)
        # GCN: self-loops added where missing, symmetric normalisation by the in-degree (gcn_norm)
        keep = src != dst
        loops = torch.arange(num_nodes)
        s = torch.cat([src[keep], loops])
        d = torch.cat([dst[keep], loops])
        degree = torch.zeros(num_nodes).index_add_(0, d, torch.ones(s.numel()))
        inv_sqrt = degree.pow(-0.5).masked_fill_(degree == 0, 0)
        self._gcn = _csr(d, s, inv_sqrt[s] * inv_sqrt[d], num_nodes)

    def to(self, device: torch.device | str) -> Adjacency:
        self._mean = tuple(m.to(device) for m in self._mean)  # type: ignore[assignment]
        self._gcn = tuple(m.to(device) for m in self._gcn)  # type: ignore[assignment]
        self.edge_index = self.edge_index.to(device)
        return self

    def mean(self, x: Tensor) -> Tensor:
        """Mean over in-neighbours (0 for a node without any), as GraphSAGE's ``aggr="mean"``."""
        return _SparseMatmul.apply(*self._mean, x)

    def gcn(self, x: Tensor) -> Tensor:
        """``D^-1/2 (A + I) D^-1/2 x`` as GCN propagates."""
        return _SparseMatmul.apply(*self._gcn, x)
