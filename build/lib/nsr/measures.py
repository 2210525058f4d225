"""Measures of a layer's class-conditional responses: intra-class variance and the complexity measure.

* ``intra_class_variance`` — Var(X_{n,j}) of every neuron n for every class j (paper Sec. 3, Eq. of sigma_n).
* ``aggregated_variance`` — sum_n sigma_n with sigma_n = sum_j (n_j / n) Var(X_{n,j}): the quantity whose
  largest value picks the NSR layer (Sec. 3, "layer selection"; appendix Table RQ4 numbers 409/510/1660).
* ``consistency_of_representations`` — the Davies–Bouldin-style Consistency-of-Representations complexity
  measure C used by Lemma 3.1 (appendix A).
* ``select_layer`` — the paper's rule: regularize the layer with the largest aggregated variance.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "check_batch",
    "ClassMoments",
    "intra_class_variance",
    "aggregated_variance",
    "consistency_of_representations",
    "consistency_terms",
    "select_layer",
]


def check_batch(responses: Tensor, labels: Tensor, num_classes: int | None = None) -> Tensor:
    """Validate ``(responses [B, ...], labels [B])`` and return the responses flattened to ``[B, N]``.

    Raises ``TypeError`` / ``ValueError`` naming the argument; checks the label range only when
    ``num_classes`` is given (it costs a device sync).
    """
    if not isinstance(responses, Tensor) or not isinstance(labels, Tensor):
        raise TypeError(f"responses and labels must be torch.Tensors, got {type(responses).__name__} and {type(labels).__name__}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise TypeError(f"labels must be an integer tensor of class indices, got dtype {labels.dtype}")
    if labels.dim() != 1:
        raise ValueError(f"labels must be 1-d, got shape {tuple(labels.shape)}")
    if responses.dim() < 1 or responses.shape[0] != labels.shape[0]:
        raise ValueError(
            f"responses and labels must have the same batch size, got {tuple(responses.shape)} and {tuple(labels.shape)}"
        )
    if labels.numel() == 0:
        raise ValueError("responses is an empty batch")
    if num_classes is not None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(f"labels must lie in [0, {num_classes - 1}], got values in [{lo}, {hi}]")
    return responses.reshape(responses.shape[0], -1)


class ClassMoments:
    """Streaming per-class count, mean and sum of squared deviations (Chan et al.'s parallel update).

    Accumulates over any number of batches in float64, vectorised over classes and neurons.
    """

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.count: Tensor | None = None  # [J]
        self.mean: Tensor | None = None  # [J, N]
        self.m2: Tensor | None = None  # [J, N]

    @torch.no_grad()
    def update(self, responses: Tensor, labels: Tensor) -> None:
        flat = check_batch(responses, labels, self.num_classes).double()
        labels = labels.to(flat.device)
        J = self.num_classes
        count = torch.bincount(labels, minlength=J).double()
        sums = flat.new_zeros(J, flat.shape[1]).index_add_(0, labels, flat)
        mean = sums / count.clamp_min(1)[:, None]
        m2 = flat.new_zeros(J, flat.shape[1]).index_add_(0, labels, (flat - mean[labels]) ** 2)
        if self.count is None:
            self.count, self.mean, self.m2 = count, mean, m2
            return
        assert self.mean is not None and self.m2 is not None
        if self.mean.shape != mean.shape:
            raise ValueError(f"responses have {mean.shape[1]} features, earlier batches had {self.mean.shape[1]}")
        total = self.count + count
        safe = total.clamp_min(1)[:, None]
        delta = mean - self.mean
        self.m2 = self.m2 + m2 + delta**2 * (self.count * count)[:, None] / safe
        self.mean = self.mean + delta * count[:, None] / safe
        self.count = total

    def variance(self) -> Tensor:
        """Population variance per class and neuron, ``[J, N]`` (0 for classes with no sample)."""
        if self.count is None or self.m2 is None:
            raise RuntimeError("no batch has been accumulated")
        return self.m2 / self.count.clamp_min(1)[:, None]

    def aggregated(self) -> float:
        """sum_n sum_j (n_j / n) Var(X_{n,j})."""
        if self.count is None or self.m2 is None:
            raise RuntimeError("no batch has been accumulated")
        return float(self.m2.sum() / self.count.sum())


def intra_class_variance(responses: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """Population variance Var(X_{n,j}) of each neuron n over the samples of each class j: ``[J, N]``.

    ``responses`` of shape ``[B, ...]`` are flattened to ``[B, N]``. Classes with no sample give 0.
    """
    moments = ClassMoments(num_classes)
    moments.update(responses, labels)
    return moments.variance().to(responses.dtype if responses.dtype.is_floating_point else torch.float64)


def aggregated_variance(responses: Tensor, labels: Tensor, num_classes: int) -> float:
    """Aggregated intra-class variance of a layer, sum_n sigma_n with alpha_j = n_j / n."""
    moments = ClassMoments(num_classes)
    moments.update(responses, labels)
    return moments.aggregated()


def consistency_terms(responses: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """The ingredients of C: S_i (mean distance to the centroid, ``[K]``) and M_ij (centroid distances, ``[K, K]``).

    K is the number of distinct labels present, in increasing label order.
    """
    flat = check_batch(responses, labels).double()
    _, index = torch.unique(labels, return_inverse=True)
    K = int(index.max()) + 1
    count = torch.bincount(index, minlength=K).double()
    centroids = flat.new_zeros(K, flat.shape[1]).index_add_(0, index, flat) / count[:, None]
    distances = torch.linalg.vector_norm(flat - centroids[index], dim=1)
    scatter = flat.new_zeros(K).index_add_(0, index, distances) / count
    separation = torch.cdist(centroids, centroids)
    return scatter, separation


def consistency_of_representations(responses: Tensor, labels: Tensor) -> float:
    """Consistency-of-Representations complexity measure (Davies–Bouldin index), appendix A / Lemma 3.1.

    C = (1/J) sum_i max_{j != i} (S_i + S_j) / M_ij, with S_i the mean Euclidean distance of class-i
    representations to their centroid and M_ij the Euclidean distance between centroids. Equals
    ``sklearn.metrics.davies_bouldin_score`` (including its conventions: coincident centroids count as
    infinitely far apart, and C = 0 when all scatters or all separations vanish).
    """
    scatter, separation = consistency_terms(responses, labels)
    K = scatter.shape[0]
    if K < 2:
        raise ValueError(f"labels must contain at least 2 classes, got {K}")
    if torch.allclose(scatter, torch.zeros_like(scatter)) or torch.allclose(separation, torch.zeros_like(separation)):
        return 0.0
    separation = separation.masked_fill(separation == 0, float("inf"))
    ratio = (scatter[:, None] + scatter[None, :]) / separation
    ratio.fill_diagonal_(float("-inf"))
    return float(ratio.max(dim=1).values.mean())


def _forward(model: nn.Module, inputs: Any) -> None:
    if isinstance(inputs, Tensor):
        model(inputs)
    elif isinstance(inputs, (tuple, list)):
        model(*inputs)
    elif isinstance(inputs, dict):
        model(**inputs)
    else:
        raise TypeError(f"inputs must be a tensor, a tuple of positional arguments or a dict, got {type(inputs).__name__}")


@torch.no_grad()
def select_layer(
    model: nn.Module,
    data: tuple[Any, Tensor] | Iterable[tuple[Any, Tensor]],
    layers: Sequence[str],
    num_classes: int,
    mask: Tensor | None = None,
) -> tuple[str, dict[str, float]]:
    """Pick the NSR layer: the candidate with the largest aggregated intra-class variance (paper Sec. 3).

    Args:
        model: the (vanilla, usually trained) model; it is put in eval mode for the measurement and restored.
        data: ``(inputs, labels)`` or an iterable of such batches. ``inputs`` is a tensor, a tuple of
            positional arguments (e.g. ``(x, edge_index)`` for a GNN) or a dict of keyword arguments.
        layers: candidate layer names (``model.get_submodule`` names).
        num_classes: number of classes.
        mask: optional boolean row mask (e.g. the training nodes of a graph), for a single ``(inputs, labels)``.

    Returns:
        the chosen layer name and ``{layer: aggregated variance}`` for every candidate.
    """
    if not layers:
        raise ValueError("layers must name at least one candidate layer")
    moments = {name: ClassMoments(num_classes) for name in layers}
    outputs: dict[str, Tensor] = {}
    handles = []
    for name in layers:
        try:
            module = model.get_submodule(name)
        except AttributeError as err:
            names = [n for n, _ in model.named_modules() if n]
            raise ValueError(f"layer {name!r} is not in the model; available layers: {names}") from err

        def keep(_m: nn.Module, _i: Any, out: Any, name: str = name) -> None:
            outputs[name] = out[0] if isinstance(out, (tuple, list)) else out

        handles.append(module.register_forward_hook(keep))
    batches = [data] if isinstance(data, tuple) and len(data) == 2 and isinstance(data[1], Tensor) else data
    was_training = model.training
    model.eval()
    try:
        for inputs, labels in batches:
            _forward(model, inputs)
            for name in layers:
                out = outputs[name]
                rows, lab = (out[mask], labels[mask]) if mask is not None else (out, labels)
                moments[name].update(rows, lab.to(out.device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    variances = {name: moments[name].aggregated() for name in layers}
    return max(variances, key=variances.__getitem__), variances
