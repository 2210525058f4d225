"""The regularizers a user would pick instead of NSR (RQ2), behind one interface.

Each method is an ``nn.Module`` that :meth:`Method.attach` es to a model (forward hooks where it needs a layer's
responses) and returns its loss term from ``method(inputs, outputs, labels, mask)``; the training loops add it
to the cross-entropy. Methods with parameters (learned centers) are optimised with the model.

* ``l1`` — L1 on the regularized layer's responses ("reward zero neuron response", the paper's RQ2 baseline).
* ``l2`` — L2 on the weights, ``weight/2 · Σ‖W‖²`` (what SGD's weight decay does).
* ``jacobian`` — Jacobian regularization (Hoffman et al. 2019): the random-projection estimate of the
  input–output Jacobian's squared Frobenius norm, ``C · ‖Jᵀv‖²`` with v uniform on the unit sphere, written
  with ``torch.autograd.grad``.
* ``center`` — center loss (Wen et al. 2016), ``weight/2 · mean_b ‖h_b − c_{y_b}‖²`` with learned centers.
* ``center-running`` — the same with centers updated by Wen et al.'s delta rule (rate ``alpha``): NSR is the
  per-neuron, queue-estimated cousin of this form.
* ``decov`` — DeCov (Cogswell et al. 2016), ``weight/2 · (‖Cov(h)‖_F² − ‖diag Cov(h)‖²)``.
* label smoothing and dropout are options of the loss and the model (``TrainConfig.label_smoothing``, the
  models' ``dropout``); NSR is :class:`nsr.NeuronSteadiness`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["Method", "L1Activation", "WeightL2", "JacobianNorm", "CenterLoss", "DeCov", "METHODS", "build_method", "layer_width"]


class Method(nn.Module):
    """A loss term added to cross-entropy. ``needs_input_grad``: the loop must pass inputs that require grad."""

    needs_input_grad = False

    def __init__(self, weight: float, layer: str | None = None) -> None:
        super().__init__()
        if weight < 0:
            raise ValueError(f"weight must be >= 0, got {weight!r}")
        self.weight = float(weight)
        self.layer = layer
        self._hook: Any = None
        self._latest: Tensor | None = None

    def attach(self, model: nn.Module) -> Method:
        if self.layer is not None:
            try:
                module = model.get_submodule(self.layer)
            except AttributeError as err:
                names = [n for n, _ in model.named_modules() if n]
                raise ValueError(f"layer {self.layer!r} is not in the model; available layers: {names}") from err
            self._hook = module.register_forward_hook(self._keep)
        self.model = [model]  # not a submodule: its parameters belong to the model
        return self

    def _keep(self, _m: nn.Module, _i: Any, out: Any) -> None:
        self._latest = out[0] if isinstance(out, (tuple, list)) else out

    def detach(self) -> None:
        if self._hook is not None:
            self._hook.remove()
        self._hook, self._latest = None, None

    def responses(self, mask: Tensor | None) -> Tensor:
        if self._latest is None:
            raise RuntimeError(f"no responses from layer {self.layer!r}: run the model forward first")
        h = self._latest.reshape(self._latest.shape[0], -1)
        return h[mask] if mask is not None else h


class L1Activation(Method):
    """``weight · mean |h|`` on the layer's responses."""

    def forward(self, inputs: Tensor, outputs: Tensor, labels: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.weight * self.responses(mask).abs().mean()


class WeightL2(Method):
    """``weight/2 · Σ ‖W‖²`` over the model's weight matrices and kernels (biases and norms excluded)."""

    def forward(self, inputs: Tensor, outputs: Tensor, labels: Tensor, mask: Tensor | None = None) -> Tensor:
        params = [p for p in self.model[0].parameters() if p.dim() > 1]
        return 0.5 * self.weight * torch.stack([p.square().sum() for p in params]).sum()


class JacobianNorm(Method):
    """Hoffman et al. (2019): ``weight/2 · C · mean_b ‖J_bᵀ v_b‖²`` with ``projections`` random unit vectors v."""

    needs_input_grad = True

    def __init__(self, weight: float, projections: int = 1) -> None:
        super().__init__(weight)
        self.projections = projections

    def forward(self, inputs: Tensor, outputs: Tensor, labels: Tensor, mask: Tensor | None = None) -> Tensor:
        if not inputs.requires_grad:
            raise RuntimeError("JacobianNorm needs inputs that require grad (the training loop sets it)")
        out = outputs if mask is None else outputs[mask]
        classes = out.shape[1]
        total = out.new_zeros(())
        for _ in range(self.projections):
            v = torch.randn_like(out)
            v = v / v.norm(dim=1, keepdim=True)
            (jv,) = torch.autograd.grad(out, inputs, v, create_graph=True)
            total = total + classes * jv.reshape(jv.shape[0], -1).square().sum() / out.shape[0]
        return 0.5 * self.weight * total / self.projections


class CenterLoss(Method):
    """Center loss (Wen et al. 2016). ``learned=True``: centers are parameters trained with the model;
    ``learned=False``: centers are buffers updated by the delta rule with rate ``alpha`` after each batch."""

    def __init__(self, num_classes: int, layer: str, weight: float, num_features: int, learned: bool = True, alpha: float = 0.5) -> None:
        super().__init__(weight, layer)
        self.num_classes, self.learned, self.alpha = num_classes, learned, alpha
        init = torch.zeros(num_classes, num_features)
        if learned:
            self.centers = nn.Parameter(init)
        else:
            self.register_buffer("centers", init)

    def forward(self, inputs: Tensor, outputs: Tensor, labels: Tensor, mask: Tensor | None = None) -> Tensor:
        h = self.responses(mask)
        y = labels[mask] if mask is not None and labels.shape[0] == mask.shape[0] else labels
        centers = self.centers
        target = centers[y] if self.learned else centers[y].detach()
        loss = 0.5 * self.weight * (h - target).square().sum(1).mean()
        if not self.learned and self.training:
            with torch.no_grad():  # delta rule: c_j -= alpha * sum_{i: y_i = j} (c_j - h_i) / (1 + n_j)
                diff = torch.zeros_like(centers).index_add_(0, y, centers[y] - h.detach())
                count = torch.bincount(y, minlength=self.num_classes).to(h.dtype)
                centers.sub_(self.alpha * diff / (1 + count)[:, None])
        return loss


class DeCov(Method):
    """DeCov (Cogswell et al. 2016): penalises the off-diagonal covariance of the layer's responses."""

    def forward(self, inputs: Tensor, outputs: Tensor, labels: Tensor, mask: Tensor | None = None) -> Tensor:
        h = self.responses(mask)
        centred = h - h.mean(0, keepdim=True)
        cov = centred.T @ centred / h.shape[0]
        return 0.5 * self.weight * (cov.square().sum() - torch.diagonal(cov).square().sum())


METHODS = ("l1", "l2", "jacobian", "center", "center-running", "decov")


def layer_width(model: nn.Module, layer: str, *example: Any) -> int:
    """Number of responses per sample of ``layer`` (one forward pass of ``example`` through ``model``)."""
    seen: list[int] = []
    handle = model.get_submodule(layer).register_forward_hook(lambda _m, _i, out: seen.append(out[0].numel()))
    was_training = model.training
    with torch.no_grad():
        model.eval()(*example)
    model.train(was_training)
    handle.remove()
    return seen[0]


def build_method(name: str, weight: float, layer: str | None, num_classes: int, num_features: int | None = None) -> Method:
    """The method called ``name`` (see :data:`METHODS`) with ``weight`` on ``layer`` where it needs one
    (center loss also needs the layer's width ``num_features``, see :func:`layer_width`)."""
    if name == "l1":
        return L1Activation(weight, layer)
    if name == "l2":
        return WeightL2(weight)
    if name == "jacobian":
        return JacobianNorm(weight)
    if name in ("center", "center-running"):
        if layer is None:
            raise ValueError("center loss needs a layer")
        if num_features is None:
            raise ValueError("center loss needs num_features (the layer's width)")
        return CenterLoss(num_classes, layer, weight, num_features, learned=name == "center")
    if name == "decov":
        return DeCov(weight, layer)
    raise ValueError(f"unknown method {name!r}; choose from {METHODS}")
