"""Neuron Steadiness Regularization (NSR): the loss term and its memory queue.

The penalty is the mini-batch estimate of the paper's Eq. L_S = sum_n lambda_n sigma_n with one weight for
all neurons of the layer (the form whose lambda values the paper and the authors' code report)::

    L_S = weight / (B * N) * sum_b sum_n (O[b, n] - mu[y_b, n]) ** 2

where ``O`` are the layer's responses flattened to ``[B, N]`` and ``mu`` are the class centroids over a queue
of the last ``M`` mini-batches *including the current one*. The queue keeps, per mini-batch, only the
per-class sums and counts (``O(M * J * N)`` floats, appendix E), never the raw responses. Centroids are
constants: the gradient flows to the current responses only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from .measures import check_batch

__all__ = ["NeuronSteadiness"]


@dataclass
class _Cursor:
    """Where the queue stands. A plain object: assigning attributes of an ``nn.Module`` goes through its slow
    ``__setattr__`` (~7 µs a time), which on a small layer is a visible share of the penalty's cost."""

    position: int = 0  # next slot to write
    filled: int = 0  # number of slots holding a batch


def _layer_names(model: nn.Module) -> list[str]:
    return [name for name, _ in model.named_modules() if name]


class NeuronSteadiness(nn.Module):
    """NSR penalty on one layer's responses, with a memory queue of per-class statistics.

    Args:
        num_classes: number of classes J (at least 2).
        queue_length: number of mini-batches M whose statistics estimate the class centroids (the current
            batch included; the paper's default is 5, the authors' CNN code uses 1).
        weight: lambda, the multiplier of the penalty (appendix Tables 2 and 3).
        sync: all-reduce the per-class sums and counts of each batch across the ranks of the default
            ``torch.distributed`` group before they enter the queue, so that every rank uses the centroids
            of the global batch. ``None`` (default) turns it on when a process group with more than one rank
            is initialised.

    Call it as ``reg(responses, labels)``, or :meth:`attach` it to a named layer and call
    :meth:`penalty`. In training mode the batch is pushed into the queue before the penalty is computed; in
    eval mode the queue is left unchanged. The queue lives in buffers (moves with ``.to()``, is saved by
    ``state_dict()``), and its position in ``get_extra_state``.
    """

    queue: Tensor
    totals: Tensor

    def __init__(
        self, num_classes: int, queue_length: int = 5, weight: float = 1.0, sync: bool | None = None
    ) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
        if isinstance(queue_length, bool) or not isinstance(queue_length, int) or queue_length < 1:
            raise ValueError(f"queue_length must be an int >= 1, got {queue_length!r}")
        if not isinstance(weight, (int, float)) or isinstance(weight, bool) or not math.isfinite(weight) or weight < 0:
            raise ValueError(f"weight must be a finite number >= 0, got {weight!r}")
        self.num_classes = num_classes
        self.queue_length = queue_length
        self.weight = float(weight)
        self.sync = sync
        # queue[m] = [J, N + 1]: per-class sums of the responses of batch m, and in the last column the
        # per-class counts. totals = sum over the queue, kept as running totals (two in-place ops a step
        # instead of a sum over M slots) and recomputed from the slots in float64 every time the queue
        # wraps, so rounding cannot accumulate beyond M steps however long the run.
        self.register_buffer("queue", torch.zeros(queue_length, num_classes, 0))
        self.register_buffer("totals", torch.zeros(num_classes, 0))
        self._cursor = _Cursor()
        self._ones: Tensor | None = None
        self._hook: RemovableHandle | None = None
        self._latest: Tensor | None = None
        self._layer_name: str | None = None

    # ------------------------------------------------------------------ state
    @property
    def num_features(self) -> int | None:
        """Width N of the regularized layer, or ``None`` before the first batch."""
        width = self.queue.shape[-1]
        return width - 1 if width else None

    @property
    def filled(self) -> int:
        """How many of the ``queue_length`` slots hold a mini-batch."""
        return self._cursor.filled

    def reset(self) -> None:
        """Empty the queue (keeps the layer width)."""
        self.queue.zero_()
        self.totals.zero_()
        self._cursor = _Cursor()

    def centroids(self) -> Tensor:
        """Class centroids ``[J, N]`` over the queue (zeros for classes the queue has not seen)."""
        if self.num_features is None:
            raise RuntimeError("the queue is empty: no batch has been seen yet")
        return self.totals[:, :-1] / self.totals[:, -1:].clamp_min(1)

    def get_extra_state(self) -> dict[str, int]:
        return {"position": self._cursor.position, "filled": self._cursor.filled}

    def set_extra_state(self, state: dict[str, int]) -> None:
        self._cursor = _Cursor(int(state["position"]), int(state["filled"]))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[no-untyped-def]
        # The layer width is only known after the first batch: take the saved buffers' shapes.
        for name in ("queue", "totals"):
            saved = state_dict.get(prefix + name)
            if saved is not None and saved.shape != getattr(self, name).shape:
                setattr(self, name, getattr(self, name).new_zeros(saved.shape))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, queue_length={self.queue_length}, weight={self.weight}, "
            f"num_features={self.num_features}, filled={self._cursor.filled}"
        )

    # ------------------------------------------------------------------ checks
    def _check(self, responses: Tensor, labels: Tensor) -> Tensor:
        flat = check_batch(responses, labels)
        if not responses.dtype.is_floating_point:
            raise TypeError(f"responses must be a floating-point tensor, got dtype {responses.dtype}")
        width = self.num_features
        if width is not None and flat.shape[1] != width:
            raise ValueError(
                f"responses have {flat.shape[1]} features per sample but the queue holds {width}; "
                "call reset_width() or use one NeuronSteadiness per layer"
            )
        if labels.device.type != "cpu":  # on CPU index_add_ checks the range for free (see _batch_stats)
            lo, hi = torch.aminmax(labels)
            if lo < 0 or hi >= self.num_classes:
                raise ValueError(f"labels must lie in [0, {self.num_classes - 1}], got values in [{int(lo)}, {int(hi)}]")
        return flat

    def reset_width(self) -> None:
        """Forget the layer width (and the queue), e.g. to move the regularizer to another layer."""
        self.queue = self.queue.new_zeros(self.queue_length, self.num_classes, 0)
        self.totals = self.totals.new_zeros(self.num_classes, 0)
        self.reset()

    def _batch_stats(self, flat: Tensor, labels: Tensor) -> Tensor:
        """Per-class sums and counts of one batch, ``[J, N + 1]`` float32 (sums | counts)."""
        batch = flat.shape[0]
        ones = self._ones
        if ones is None or ones.shape[0] != batch or ones.device != flat.device:
            ones = self._ones = torch.ones(batch, 1, device=flat.device)
        augmented = torch.cat((flat.detach().float(), ones), 1)
        stats = augmented.new_zeros(self.num_classes, augmented.shape[1])
        try:
            stats.index_add_(0, labels, augmented)
        except (IndexError, RuntimeError) as err:
            raise ValueError(
                f"labels must lie in [0, {self.num_classes - 1}], got values in "
                f"[{int(labels.min())}, {int(labels.max())}]"
            ) from err
        if not math.isfinite(stats.sum().item()):
            raise ValueError("responses contain NaN or infinite values")
        if self._synchronised():
            dist.all_reduce(stats)
        return stats

    def _synchronised(self) -> bool:
        if self.sync is False:
            return False
        active = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if self.sync and not active:
            raise RuntimeError("sync=True needs an initialised torch.distributed process group")
        return active

    def _materialise(self, width: int, device: torch.device) -> None:
        self.queue = torch.zeros(self.queue_length, self.num_classes, width + 1, device=device)
        self.totals = torch.zeros(self.num_classes, width + 1, device=device)

    def _push(self, stats: Tensor) -> None:
        cursor, queue, totals = self._cursor, self.queue, self.totals
        slot = queue[cursor.position]
        if self.queue_length == 1:
            slot.copy_(stats)
            totals.copy_(stats)
        elif cursor.position == 0 and cursor.filled == self.queue_length:
            # wrap-around: recompute the running totals from the slots, in float64
            slot.copy_(stats)
            totals.copy_(queue.sum(0, dtype=torch.float64))
        else:
            totals.sub_(slot).add_(stats)
            slot.copy_(stats)
        cursor.position = (cursor.position + 1) % self.queue_length
        cursor.filled = min(cursor.filled + 1, self.queue_length)

    # ------------------------------------------------------------------ penalty
    def forward(self, responses: Tensor, labels: Tensor) -> Tensor:
        """Weighted NSR penalty of ``responses`` ([B, ...]) with class ``labels`` ([B])."""
        flat = self._check(responses, labels)
        stats = self._batch_stats(flat, labels)
        if self.num_features is None:
            self._materialise(flat.shape[1], flat.device)
        if self.training:
            self._push(stats)
            totals = self.totals
        else:  # against the queue; classes the queue has not seen fall back to this batch's own mean
            totals = torch.where(self.totals[:, -1:] > 0, self.totals, stats)
        compute = flat if flat.dtype == torch.float64 else flat.float()
        # every label of the batch has a count >= 1 here (the batch is in the queue, or is the fallback)
        rows = totals.to(compute.dtype).index_select(0, labels)
        target = rows[:, :-1] / rows[:, -1:]
        penalty = F.mse_loss(compute, target)
        return penalty * self.weight if self.weight != 1.0 else penalty

    # ------------------------------------------------------------------ hooks
    def attach(self, model: nn.Module, layer: str) -> RemovableHandle:
        """Keep the output of ``model.get_submodule(layer)`` for :meth:`penalty` (a forward hook).

        Returns the hook's handle; ``handle.remove()`` (or :meth:`detach`) stops it. Attaching again moves
        the hook to the new layer.
        """
        try:
            module = model.get_submodule(layer)
        except AttributeError as err:
            raise ValueError(f"layer {layer!r} is not in the model; available layers: {_layer_names(model)}") from err
        if not layer:
            raise ValueError(f"layer must name a submodule; available layers: {_layer_names(model)}")
        self.detach()
        self._layer_name = layer
        self._hook = module.register_forward_hook(self._keep)
        return self._hook

    def detach(self) -> None:
        """Remove the forward hook, if any."""
        if self._hook is not None:
            self._hook.remove()
        self._hook = None
        self._latest = None

    @property
    def layer(self) -> str | None:
        """Name of the attached layer."""
        return self._layer_name if self._hook is not None else None

    def _keep(self, module: nn.Module, inputs: Any, output: Any) -> None:
        if isinstance(output, (tuple, list)):
            output = output[0]
        if not isinstance(output, Tensor):
            raise TypeError(f"layer {self._layer_name!r} returned {type(output).__name__}, not a tensor")
        self._latest = output

    @property
    def responses(self) -> Tensor:
        """Latest output of the attached layer."""
        if self._latest is None:
            where = f"layer {self._layer_name!r}" if self._hook is not None else "no layer (call attach() first)"
            raise RuntimeError(f"no responses recorded: run the model forward first ({where})")
        return self._latest

    def penalty(self, labels: Tensor, mask: Tensor | None = None) -> Tensor:
        """NSR penalty on the attached layer's latest output; ``mask`` (bool, [B]) selects rows."""
        responses = self.responses
        if mask is not None:
            if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
                raise TypeError("mask must be a boolean tensor")
            if mask.dim() != 1 or mask.shape[0] != responses.shape[0]:
                raise ValueError(
                    f"mask must be 1-d with one entry per row of the responses ({responses.shape[0]}), "
                    f"got shape {tuple(mask.shape)}"
                )
            responses = responses[mask]
            if labels.shape[0] == mask.shape[0]:
                labels = labels[mask]
        return self.forward(responses, labels)
