"""Training loops with or without NSR: mini-batch image classification and full-batch node classification.

Both record, per epoch: the mean training cross-entropy of the mini-batches, the mean NSR penalty, the
train / validation / test accuracy (eval mode), the aggregated intra-class variance of the tracked layer on
the training set (Sec. 2.2, Observation 2) and the epoch's training time. The reported result is the test
accuracy at the epoch of best validation accuracy (the authors' model selection). Deterministic on CPU for a
given seed: the seed fixes the initialisation (``torch.manual_seed`` before the model is built is the
caller's job, see :mod:`nsr.experiments`) and a separate generator fixes the mini-batch order, so a vanilla
and an NSR run with the same seed start from the same weights and see the same batches.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from .graph import Adjacency
from .measures import ClassMoments
from .regularizer import NeuronSteadiness

__all__ = ["neighbor_batches", "TrainConfig", "RunResult", "Regularizer", "train_classifier", "train_node_classifier", "evaluate"]

#: An extra loss term (:class:`nsr.baselines.Method`): attached to the model, then called with
#: (inputs, outputs, labels, row mask or None) after every forward pass.
Regularizer = Any


@dataclass
class TrainConfig:
    """Hyper-parameters of one training run (the defaults are the authors' MLP / MNIST protocol)."""

    epochs: int = 100
    lr: float = 0.01
    batch_size: int = 100
    optimizer: str = "sgd"  # "sgd" or "adam"
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    milestones: Sequence[int] = ()  # MultiStepLR epochs
    gamma: float = 0.1
    nsr_weight: float = 0.0  # lambda; 0 = vanilla
    nsr_layers: Sequence[str] = ()  # layers NSR regularizes (one in the paper's method)
    queue_length: int = 5
    track_layer: str | None = None  # layer whose intra-class variance is recorded (default: first NSR layer)
    seed: int = 0
    eval_batch_size: int = 10_000
    progress: bool = True
    device: str = "cpu"
    augment: str | None = None  # None, "cifar" (crop 32 pad 4 + flip) or "cifar-cutout" (+ Cutout 16 px)
    workers: int = 0  # DataLoader workers when batches come from a DataLoader (augmentation, ImageFolder)
    amp: bool = False  # autocast to bfloat16 (NSR still accumulates in float32)
    label_smoothing: float = 0.0
    # graphs: None = full-batch training; fan-outs per layer (e.g. (25, 10), -1 = all neighbours) = mini-batches of
    # ``batch_size`` training nodes with sampled neighbourhoods (torch_geometric's NeighborLoader: needs pyg-lib
    # or torch-sparse)
    neighbor_sampling: Sequence[int] | None = None

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size", "queue_length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        for name in ("lr", "nsr_weight", "weight_decay", "momentum"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
        if isinstance(self.nsr_layers, str):
            self.nsr_layers = (self.nsr_layers,)
        self.nsr_layers = tuple(self.nsr_layers)
        self.milestones = tuple(self.milestones)
        if self.augment not in (None, "cifar", "cifar-cutout"):
            raise ValueError(f"augment must be None, 'cifar' or 'cifar-cutout', got {self.augment!r}")
        if self.neighbor_sampling is not None:
            fanouts = tuple(self.neighbor_sampling)
            if not fanouts or any(isinstance(k, bool) or not isinstance(k, int) or (k < 1 and k != -1) for k in fanouts):
                raise ValueError(f"neighbor_sampling must be fan-outs per layer (positive ints or -1), got {self.neighbor_sampling!r}")
            self.neighbor_sampling = fanouts
        if self.nsr_weight > 0 and not self.nsr_layers:
            raise ValueError("nsr_weight > 0 needs nsr_layers (the layer names to regularize)")

    @property
    def tracked(self) -> str | None:
        return self.track_layer or (self.nsr_layers[0] if self.nsr_layers else None)


@dataclass
class RunResult:
    """Per-epoch history and the model-selected result of one run."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = -1
    best_val_acc: float = float("nan")
    test_acc: float = float("nan")
    test_top5: float = float("nan")

    @property
    def test_error(self) -> float:
        """Test error in % at the best-validation epoch."""
        return 100.0 * (1.0 - self.test_acc)

    def metrics(self) -> dict[str, float]:
        last = self.history[-1] if self.history else {}
        return {
            "test_acc": self.test_acc,
            "test_error": self.test_error,
            "test_top5_error": 100.0 * (1.0 - self.test_top5),
            "best_val_acc": self.best_val_acc,
            "best_epoch": self.best_epoch,
            "final_train_ce": last.get("train_ce", float("nan")),
            "final_variance": last.get("variance", float("nan")),
            "epoch_time": sum(h["time"] for h in self.history) / max(len(self.history), 1),
        }

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "metrics": self.metrics()}


def _optimizer(model: nn.Module, cfg: TrainConfig, extra: Sequence[nn.Module] = ()) -> tuple[torch.optim.Optimizer, Any]:
    params = [p for m in (model, *extra) for p in m.parameters() if p.requires_grad]
    if cfg.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay
        )
    else:
        opt = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, list(cfg.milestones), cfg.gamma) if cfg.milestones else None
    return opt, sched


def _unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel / DataParallel wrapper (layer names refer to it)."""
    return model.module if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else model


def _world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _regularizers(model: nn.Module, cfg: TrainConfig, num_classes: int) -> list[NeuronSteadiness]:
    model = _unwrap(model)
    regs = []
    if cfg.nsr_weight > 0:
        for layer in cfg.nsr_layers:
            reg = NeuronSteadiness(num_classes, cfg.queue_length, cfg.nsr_weight).to(cfg.device)
            reg.attach(model, layer)
            regs.append(reg)
    return regs


@contextlib.contextmanager
def _session(
    model: nn.Module, cfg: TrainConfig, num_classes: int, methods: Sequence[Regularizer] = ()
) -> Iterator[tuple[Any, Any, list[NeuronSteadiness], "_Tracker", Any]]:
    """Optimizer, scheduler, NSR hooks, extra methods, variance tracker and progress bar of one run; hooks
    are removed at the end."""
    for method in methods:
        method.to(cfg.device).attach(_unwrap(model))
    opt, sched = _optimizer(model, cfg, methods)
    regs = _regularizers(model, cfg, num_classes)
    tracker = _Tracker(_unwrap(model), cfg.tracked, num_classes)
    bar = tqdm(range(cfg.epochs), desc=f"train seed={cfg.seed}", disable=not cfg.progress, leave=False)
    try:
        yield opt, sched, regs, tracker, bar
    finally:
        for reg in regs:
            reg.detach()
        for method in methods:
            method.detach()
        tracker.remove()


class _Tracker:
    """Forward hook on the tracked layer that accumulates class moments while ``active``."""

    def __init__(self, model: nn.Module, layer: str | None, num_classes: int) -> None:
        self.moments: ClassMoments | None = None
        self.labels: Tensor | None = None
        self.mask: Tensor | None = None
        self.num_classes = num_classes
        self.handle = None
        if layer is not None:
            try:
                module = model.get_submodule(layer)
            except AttributeError as err:
                names = [n for n, _ in model.named_modules() if n]
                raise ValueError(f"track_layer {layer!r} is not in the model; available layers: {names}") from err
            self.handle = module.register_forward_hook(self._hook)

    def _hook(self, _m: nn.Module, _i: Any, out: Any) -> None:
        if self.moments is not None and self.labels is not None:
            out = out[0] if isinstance(out, (tuple, list)) else out
            if self.mask is not None:
                out = out[self.mask]
            self.moments.update(out, self.labels)

    def start(self, labels: Tensor | None = None, mask: Tensor | None = None) -> None:
        if self.handle is not None:
            self.moments = ClassMoments(self.num_classes)
            self.labels, self.mask = labels, mask

    def stop(self) -> float:
        value = self.moments.aggregated() if self.moments is not None and self.moments.count is not None else float("nan")
        self.moments, self.labels, self.mask = None, None, None
        return value

    def remove(self) -> None:
        if self.handle is not None:
            self.handle.remove()


@torch.no_grad()
def evaluate_batches(model: nn.Module, batches: Any, tracker: _Tracker | None = None, device: torch.device | str = "cpu") -> dict[str, float]:
    """Accuracy, top-5 accuracy, mean cross-entropy and the tracked layer's aggregated variance over ``batches``."""
    model.eval()
    correct = top5 = total = 0
    loss = 0.0
    if tracker is not None:
        tracker.start()
    for xb, yb in batches:
        xb, yb = xb.to(device), yb.to(device)
        if tracker is not None:
            tracker.labels = yb
        out = model(xb)
        correct += int((out.argmax(1) == yb).sum())
        k = min(5, out.shape[1])
        top5 += int((out.topk(k, 1).indices == yb[:, None]).any(1).sum())
        loss += float(F.cross_entropy(out.float(), yb, reduction="sum"))
        total += len(yb)
    variance = tracker.stop() if tracker is not None else float("nan")
    return {"acc": correct / total, "top5": top5 / total, "ce": loss / total, "variance": variance}


def _slices(x: Tensor, y: Tensor, batch_size: int) -> Iterator[tuple[Tensor, Tensor]]:
    for start in range(0, len(y), batch_size):
        yield x[start : start + batch_size], y[start : start + batch_size]


def evaluate(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 10_000, tracker: _Tracker | None = None) -> tuple[float, float, float]:
    """(accuracy, mean cross-entropy, aggregated variance of the tracked layer) of ``model`` on ``(x, y)``."""
    m = evaluate_batches(model, _slices(x, y, batch_size), tracker, x.device)
    return m["acc"], m["ce"], m["variance"]


class AugmentedTensors(torch.utils.data.Dataset):
    """In-memory images with a per-sample torchvision transform (for the DataLoader path)."""

    def __init__(self, x: Tensor, y: Tensor, transform: Callable[[Tensor], Tensor]) -> None:
        self.x, self.y, self.transform = x, y, transform

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.transform(self.x[i]), self.y[i]


def augmentation(name: str) -> Callable[[Tensor], Tensor]:
    """The CIFAR recipes of the authors' code: random crop 32 with padding 4 and horizontal flip, plus Cutout
    (one 16×16 hole, as ``RandomErasing`` with a fixed 16×16 box kept inside the image) for "cifar-cutout"."""
    from torchvision.transforms import v2

    steps = [v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip()]
    if name == "cifar-cutout":
        steps.append(v2.RandomErasing(p=1.0, scale=(0.25, 0.25), ratio=(1.0, 1.0), value=0))
    return v2.Compose(steps)


def _batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[Tensor]:
    perm = torch.randperm(n, generator=generator)
    for start in range(0, n, batch_size):
        yield perm[start : start + batch_size]


def _select(result: RunResult) -> None:
    best = max(range(len(result.history)), key=lambda e: (result.history[e]["val_acc"], -e))
    result.best_epoch = best + 1
    result.best_val_acc = result.history[best]["val_acc"]
    result.test_acc = result.history[best]["test_acc"]
    result.test_top5 = result.history[best].get("test_top5", float("nan"))


def train_classifier(
    model: nn.Module,
    data: Any,
    cfg: TrainConfig,
    regularizers: Sequence[Regularizer] = (),
) -> RunResult:
    """Mini-batch training with NSR when ``cfg.nsr_weight > 0``.

    On in-memory tensors (:class:`nsr.data.ImageSplits`) without augmentation, batches are slices of a
    seeded permutation (no DataLoader overhead); with ``cfg.augment`` or on disk datasets
    (:class:`nsr.data.ImageFolderSplits`, ImageNet) they come from a ``torch.utils.data.DataLoader``.

    ``regularizers`` are extra loss terms (used by the baselines chapter). The training set is shuffled once per
    epoch with a generator seeded by ``cfg.seed`` and sliced into batches: no DataLoader overhead.

    Under ``torch.distributed`` (``model`` wrapped in ``DistributedDataParallel``) every rank draws the same
    global batch of ``cfg.batch_size`` and trains on its own share of it; NSR all-reduces the per-class
    statistics, so the centroids are those of the global batch.
    """
    device = torch.device(cfg.device)
    model.to(device)
    generator = torch.Generator().manual_seed(cfg.seed)
    in_memory = hasattr(data, "train_x")
    if in_memory:
        x, y = data.train_x.to(device), data.train_y.to(device)
        evals = {s: tuple(t.to(device) for t in data.split(s)) for s in ("train", "val", "test")}
    loader = None
    if not in_memory or cfg.augment:
        train_set = AugmentedTensors(data.train_x, data.train_y, augmentation(cfg.augment)) if in_memory and cfg.augment else data.train
        loader = torch.utils.data.DataLoader(train_set, cfg.batch_size, shuffle=True, generator=generator,
                                             num_workers=cfg.workers, pin_memory=device.type == "cuda")

    def eval_split(split: str, tracker: _Tracker | None = None) -> dict[str, float]:
        if in_memory:
            return evaluate_batches(model, _slices(*evals[split], cfg.eval_batch_size), tracker, device)
        dataset = {"train": data.train, "val": data.val, "test": data.test}[split]
        batches = torch.utils.data.DataLoader(dataset, cfg.batch_size, num_workers=cfg.workers)
        return evaluate_batches(model, batches, tracker, device)

    def train_batches() -> Iterator[tuple[Tensor, Tensor]]:
        if loader is not None:
            yield from loader
            return
        rank, world = _world()
        for idx in _batches(len(y), cfg.batch_size, generator):
            if world > 1:
                if len(idx) < world:  # every rank needs a share (the same decision on every rank)
                    continue
                idx = idx.tensor_split(world)[rank]
            yield x[idx], y[idx]

    result = RunResult()
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.amp)
    input_grad = any(getattr(m, "needs_input_grad", False) for m in regularizers)
    with _session(model, cfg, int(data.num_classes), regularizers) as (opt, sched, regs, tracker, bar):
        for epoch in bar:
            for module in (model, *regularizers):
                module.train()
            start = time.perf_counter()
            ce_sum = torch.zeros((), device=device)
            pen_sum = torch.zeros((), device=device)
            steps = 0
            for xb, yb in train_batches():
                xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
                if input_grad:
                    xb = xb.clone().requires_grad_()
                with autocast:
                    out = model(xb)
                    ce = F.cross_entropy(out.float(), yb, label_smoothing=cfg.label_smoothing)
                    loss = ce
                    for reg in regs:
                        penalty = reg.penalty(yb)
                        loss = loss + penalty
                        pen_sum += penalty.detach()
                    for extra in regularizers:
                        loss = loss + extra(xb, out, yb, None)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                ce_sum += ce.detach()
                steps += 1
            if sched is not None:
                sched.step()
            elapsed = time.perf_counter() - start
            train_m = eval_split("train", tracker)
            val_m, test_m = eval_split("val"), eval_split("test")
            ce_mean = float(ce_sum) / max(steps, 1)
            result.history.append(
                {
                    "epoch": epoch + 1,
                    "train_ce": ce_mean,
                    "nsr_penalty": float(pen_sum) / max(steps, 1),
                    "nsr_ce_ratio": float(pen_sum) / max(float(ce_sum), 1e-30),
                    "train_ce_eval": train_m["ce"],
                    "train_acc": train_m["acc"],
                    "val_acc": val_m["acc"],
                    "test_acc": test_m["acc"],
                    "test_top5": test_m["top5"],
                    "variance": train_m["variance"],
                    "time": elapsed,
                }
            )
            bar.set_postfix(ce=f"{ce_mean:.4f}", val=f"{val_m['acc']:.4f}")
    _select(result)
    return result


def adjacency(data: Any) -> Adjacency:
    """Precomputed propagation operators of a graph (:class:`nsr.graph.Adjacency`), for fast full-batch training."""
    return Adjacency(data.edge_index, data.num_nodes)


@torch.no_grad()
def _node_eval(model: nn.Module, data: Any, adj: Tensor, tracker: _Tracker) -> dict[str, float]:
    model.eval()
    tracker.start(data.y[data.train_mask], data.train_mask)
    out = model(data.x, adj)
    variance = tracker.stop()
    pred = out.argmax(1)
    accs = {f"{s}_acc": float((pred[m] == data.y[m]).float().mean()) for s, m in (("train", data.train_mask), ("val", data.val_mask), ("test", data.test_mask))}
    accs["train_ce_eval"] = float(F.cross_entropy(out[data.train_mask], data.y[data.train_mask]))
    accs["variance"] = variance
    return accs


def neighbor_batches(data: Any, cfg: TrainConfig, generator: torch.Generator) -> Iterator[Any]:
    """One epoch of mini-batches of ``cfg.batch_size`` training nodes with neighbourhoods sampled by
    ``torch_geometric.loader.NeighborLoader`` (fan-outs ``cfg.neighbor_sampling``); each batch is a subgraph
    whose first ``batch_size`` nodes are the seed nodes."""
    import torch_geometric.typing as pyg_typing
    from torch_geometric.loader import NeighborLoader

    if not (pyg_typing.WITH_PYG_LIB or pyg_typing.WITH_TORCH_SPARSE):
        raise RuntimeError("neighbor_sampling needs pyg-lib or torch-sparse (neither is installed); "
                           "set neighbor_sampling=None for full-batch training")
    return iter(NeighborLoader(data, num_neighbors=list(cfg.neighbor_sampling or ()), batch_size=cfg.batch_size,
                               input_nodes=data.train_mask, shuffle=True, generator=generator))


def train_node_classifier(
    model: nn.Module,
    data: Any,
    cfg: TrainConfig,
    regularizers: Sequence[Regularizer] = (),
) -> RunResult:
    """Node classification on a ``torch_geometric`` graph with train/val/test masks: full batch, or with
    ``cfg.neighbor_sampling`` mini-batches of training nodes with sampled neighbourhoods (:func:`neighbor_batches`).

    Message passing uses precomputed sparse operators (:class:`nsr.graph.Adjacency`: same outputs as
    ``edge_index`` scatter, several times faster on CPU). NSR responses are masked to the training nodes
    (the seed nodes of a mini-batch); evaluation is full batch.
    """
    device = torch.device(cfg.device)
    model.to(device)
    data = data.to(device)
    adj = adjacency(data).to(device)
    result = RunResult()
    input_grad = any(getattr(m, "needs_input_grad", False) for m in regularizers)
    generator = torch.Generator().manual_seed(cfg.seed)
    with _session(model, cfg, int(data.num_classes), regularizers) as (opt, sched, regs, tracker, bar):

        def step(graph: Any, graph_adj: Any, mask: Tensor) -> tuple[Tensor, Tensor]:
            labels = graph.y[mask]
            x = graph.x.clone().requires_grad_() if input_grad else graph.x
            out = model(x, graph_adj)
            ce = F.cross_entropy(out[mask], labels, label_smoothing=cfg.label_smoothing)
            loss = ce
            penalty_total = torch.zeros((), device=device)
            for reg in regs:
                penalty = reg.penalty(labels, mask)
                loss = loss + penalty
                penalty_total = penalty_total + penalty.detach()
            for extra in regularizers:
                loss = loss + extra(x, out, graph.y, mask)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return ce.detach(), penalty_total

        for epoch in bar:
            for module in (model, *regularizers):
                module.train()
            start = time.perf_counter()
            if cfg.neighbor_sampling is None:
                ce, penalty = step(data, adj, data.train_mask)
            else:
                ces, penalties = [], []
                for sub in neighbor_batches(data, cfg, generator):
                    seeds = torch.zeros(sub.num_nodes, dtype=torch.bool, device=device)
                    seeds[: sub.batch_size] = True
                    c, p = step(sub, adjacency(sub).to(device), seeds)
                    ces.append(c)
                    penalties.append(p)
                ce, penalty = torch.stack(ces).mean(), torch.stack(penalties).mean()
            if sched is not None:
                sched.step()
            elapsed = time.perf_counter() - start
            record = {"epoch": epoch + 1, "train_ce": float(ce), "nsr_penalty": float(penalty)}
            record["nsr_ce_ratio"] = record["nsr_penalty"] / max(record["train_ce"], 1e-30)
            record.update(_node_eval(model, data, adj, tracker))
            record["time"] = elapsed
            result.history.append(record)
            bar.set_postfix(ce=f"{record['train_ce']:.4f}", val=f"{record['val_acc']:.4f}")
    _select(result)
    return result
