"""Numeric checks of Lemma 3.1 (appendix A): with NSR the Consistency-of-Representations measure C tends to 0;
with cross-entropy alone gradient descent stops at minima where C stays positive.

Two settings:

* :func:`idealised_run` — the proof's own model. A "sufficiently large" model is one whose layer-k
  representation of every training sample is free: ``O_tau`` are free variables (``[n, d]``), and the final
  representation is ``a_tau = relu(W O_tau + b)`` (non-negative), normalised as in the proof's Eq. (3),
  ``q_tau(y) = a_y / sum_j a_j``. Cross-entropy is zero exactly when every ``a_j`` (j != y) is 0 and ``a_y``
  is any positive number (Eq. 6), so each sample converges to its own ``C_tau e_y`` and C stays positive.
  NSR on the layer-k representation (Eq. 7) pulls every ``O_tau`` to its class centroid, so all samples of
  a class share one final representation (Eq. 8) and C → 0.
* :func:`mlp_run` — a real over-parameterised MLP trained full-batch to convergence on a small real dataset,
  with NSR on its penultimate layer; C is measured on that layer and on the normalised output.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from .measures import consistency_of_representations, consistency_terms
from .regularizer import NeuronSteadiness

__all__ = ["LemmaTrace", "idealised_run", "mlp_run"]


@dataclass
class LemmaTrace:
    """C, the class scatters S_i and the centroid distances M_ij over the iterations of one run."""

    weight: float
    seed: int
    steps: list[int] = field(default_factory=list)
    consistency: list[float] = field(default_factory=list)  # C of the final (normalised) representation
    consistency_layer: list[float] = field(default_factory=list)  # C of the regularised layer
    scatter: list[list[float]] = field(default_factory=list)  # S_i per class
    separation: list[float] = field(default_factory=list)  # min_{i != j} M_ij
    cross_entropy: list[float] = field(default_factory=list)

    def record(self, step: int, final: Tensor, layer: Tensor, labels: Tensor, ce: float) -> None:
        s, m = consistency_terms(final, labels)
        off = m + torch.diag(torch.full((m.shape[0],), float("inf"), dtype=m.dtype))
        self.steps.append(step)
        self.consistency.append(consistency_of_representations(final, labels))
        self.consistency_layer.append(consistency_of_representations(layer, labels))
        self.scatter.append(s.tolist())
        self.separation.append(float(off.min()))
        self.cross_entropy.append(ce)


def _normalised_ce(a: Tensor, labels: Tensor) -> Tensor:
    """Eq. (2)-(4): -log(a_y / sum_j a_j) for non-negative final representations a."""
    eps = 1e-12
    return -(torch.log(a.gather(1, labels[:, None]).squeeze(1) + eps) - torch.log(a.sum(1) + eps)).mean()


def idealised_run(
    weight: float,
    seed: int,
    num_samples: int = 60,
    num_classes: int = 3,
    steps: int = 3000,
    lr: float = 0.05,
    record_every: int = 25,
) -> LemmaTrace:
    """Projected gradient descent on the proof's idealised model, NSR weight ``weight`` (0 = cross-entropy only).

    The model is "sufficiently large": the representation ``a_tau`` (``[n, J]``, non-negative) that Eq. (3)
    normalises is a free variable per sample, initialised at random in [0.2, 2]. Each step takes a gradient
    step on ``CE + L_S`` (NSR on ``a`` with its class centroids over the full batch, M = 1) and projects back
    onto ``a >= 0``. C, S_i and M_ij are those of ``a``.
    """
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(num_samples) % num_classes
    a = (0.2 + 1.8 * torch.rand(num_samples, num_classes, generator=g)).requires_grad_()
    reg = NeuronSteadiness(num_classes, queue_length=1, weight=max(weight, 0.0))
    trace = LemmaTrace(weight, seed)
    for step in range(steps + 1):
        ce = _normalised_ce(a, labels)
        if step % record_every == 0 or step == steps:
            trace.record(step, a.detach(), a.detach(), labels, float(ce.detach()))
        loss = ce + (reg(a, labels) if weight > 0 else 0.0)
        (grad,) = torch.autograd.grad(loss, a)
        with torch.no_grad():
            a.sub_(lr * num_samples * grad).clamp_(min=0.0)  # per-sample step size lr (the loss is a mean)
    return trace


def mlp_run(
    x: Tensor,
    y: Tensor,
    weight: float,
    seed: int,
    hidden: Sequence[int] = (512, 256),
    steps: int = 1500,
    lr: float = 1e-3,
    record_every: int = 50,
) -> LemmaTrace:
    """Full-batch Adam on an over-parameterised MLP (``hidden`` widths) with NSR on the penultimate layer.

    C is recorded on the penultimate layer (``consistency_layer``) and on the logits (``consistency``). (On
    the softmax output C tends to 0 with or without NSR, because the probabilities saturate to one-hot
    vectors as the cross-entropy goes to 0; the proof's unnormalised representation is the logits' analogue.)
    """
    torch.manual_seed(seed)
    num_classes = int(y.max()) + 1
    sizes = [x[0].numel(), *hidden]
    blocks: list[torch.nn.Module] = [torch.nn.Flatten()]
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        blocks += [torch.nn.Linear(fan_in, fan_out), torch.nn.ReLU()]
    body = torch.nn.Sequential(*blocks)
    head = torch.nn.Linear(sizes[-1], num_classes)
    for m in [*body.modules(), head]:
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.xavier_normal_(m.weight)
            torch.nn.init.zeros_(m.bias)
    reg = NeuronSteadiness(num_classes, queue_length=1, weight=max(weight, 0.0))
    opt = torch.optim.Adam([*body.parameters(), *head.parameters()], lr=lr)
    trace = LemmaTrace(weight, seed)
    for step in range(steps + 1):
        features = body(x)
        logits = head(features)
        ce = F.cross_entropy(logits, y)
        if step % record_every == 0 or step == steps:
            trace.record(step, logits.detach(), features.detach(), y, float(ce.detach()))
        loss = ce + (reg(features, y) if weight > 0 else 0.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return trace
