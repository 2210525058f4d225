"""Time and space overhead of NSR (appendix E, Table 6 and the space analysis).

Training-step times with and without NSR run interleaved in one process: R rounds, each building every variant
afresh and timing k steps of each in rotating order; variants are compared by the per-round ratio (median and
interquartile range), and an A/A control — a second vanilla build timed like the others — shows the noise
floor. The paper reports 1.16× (MLP-4), 1.07× (ResNet-18) and 1.16× (GraphSAGE-2) per epoch; NSR's own work is
O(B·N) on one layer.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from . import models
from .regularizer import NeuronSteadiness
from .train import adjacency

__all__ = ["CONTROL", "PAPER", "PAPER_EPOCH_SECONDS", "StepBuilder", "cases", "measure_many", "ratio_summary", "method_overhead_table",
           "overhead_table", "space_table", "amazon_computers_graph"]

PAPER_EPOCH_SECONDS = {"MLP-4": (2.19, 2.54), "ResNet-18": (15.45, 16.56), "GraphSAGE-2": (0.0489, 0.0569)}

def _image_step(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, extra: Sequence[torch.nn.Module] = (),
                smoothing: float = 0.0) -> Callable[[], None]:
    """One SGD step of ``model`` on ``(x, y)``: cross-entropy (``label_smoothing``) plus the loss of each module in
    ``extra`` — :class:`NeuronSteadiness` or an :class:`nsr.baselines.Method`, optimised with the model."""
    params = [*model.parameters(), *(p for m in extra for p in m.parameters())]
    opt = torch.optim.SGD(params, lr=0.01, momentum=0.9)
    input_grad = any(getattr(m, "needs_input_grad", False) for m in extra)

    def step() -> None:
        xb = x.clone().requires_grad_() if input_grad else x
        out = model(xb)
        loss = F.cross_entropy(out, y, label_smoothing=smoothing)
        for m in extra:
            loss = loss + (m.penalty(y) if isinstance(m, NeuronSteadiness) else m(xb, out, y, None))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def _graph_step(model: torch.nn.Module, reg: NeuronSteadiness | None, data, adj) -> Callable[[], None]:  # type: ignore[no-untyped-def]
    opt = torch.optim.Adam(model.parameters(), lr=0.01, weight_decay=5e-4)
    mask, labels = data.train_mask, data.y[data.train_mask]

    def step() -> None:
        out = model(data.x, adj)
        loss = F.cross_entropy(out[mask], labels)
        if reg is not None:
            loss = loss + reg.penalty(labels, mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


StepBuilder = Callable[[], Callable[[], None]]
"""A zero-argument function that builds a fresh model (seeded) and returns its training-step function."""

#: The A/A control: a second, independently built vanilla variant, timed like the others. Its ratio to vanilla
#: is the noise floor of the measurement (a ratio closer to 1 than this is not resolved).
CONTROL = "vanilla (A/A)"


def _variants(build, layer: str, num_classes: int, queue: int, make_step) -> dict[str, StepBuilder]:  # type: ignore[no-untyped-def]
    """Builders of vanilla, the A/A control and NSR on ``layer``; every build starts from the same seeded weights."""

    def vanilla() -> Callable[[], None]:
        torch.manual_seed(0)
        return make_step(build(), None)

    def nsr() -> Callable[[], None]:
        torch.manual_seed(0)
        model = build()
        reg = NeuronSteadiness(num_classes, queue, 1.0)
        reg.attach(model, layer)
        return make_step(model, reg)

    return {"vanilla": vanilla, CONTROL: vanilla, "NSR": nsr}


def amazon_computers_graph():  # type: ignore[no-untyped-def]
    """The real Amazon-Computers graph when it is under $NSR_DATA, else a random graph of its size."""
    from nsr import data as nsr_data

    try:
        return nsr_data.load("amazon-computers"), "real Amazon-Computers"
    except nsr_data.DatasetNotAvailable:
        from torch_geometric.data import Data
        from torch_geometric.utils import to_undirected

        g = torch.Generator().manual_seed(0)
        n, e = 13_752, 245_861
        edge_index = to_undirected(torch.randint(0, n, (2, e), generator=g))
        x = (torch.rand(n, 767, generator=g) < 0.05).float()
        y = torch.randint(0, 10, (n,), generator=g)
        mask = torch.rand(n, generator=g) < 0.6
        data = Data(x=x, edge_index=edge_index, y=y, train_mask=mask)
        data.num_classes = 10
        return data, "random graph of Amazon-Computers' size"


def cases(names: list[str], resnet_batch: int = 32, resnet_width: int = 64) -> Iterator[tuple[str, int, dict[str, StepBuilder]]]:
    """(label, steps per epoch, builders of vanilla / A/A control / NSR steps) for each model named in ``names``."""
    if "mlp4" in names:
        x, y = torch.rand(100, 1, 28, 28), torch.randint(0, 10, (100,))
        yield "MLP-4", 500, _variants(
            lambda: models.mlp(4), "layer4", 10, 5, lambda m, r: _image_step(m, x, y, [r] if r is not None else [])
        )
    if "resnet18" in names:
        x, y = torch.rand(resnet_batch, 3, 32, 32), torch.randint(0, 10, (resnet_batch,))
        yield "ResNet-18", -(-50_000 // resnet_batch), _variants(
            lambda: models.resnet18_cifar(width=resnet_width), "fc", 10, 1, lambda m, r: _image_step(m, x, y, [r] if r is not None else [])
        )
    if "sage2" in names:
        data, what = amazon_computers_graph()
        adj = adjacency(data)
        yield "GraphSAGE-2", 1, _variants(
            lambda: models.gnn("sage", 2, data.x.shape[1], int(data.num_classes)),
            "layer1",
            int(data.num_classes),
            5,
            lambda m, r: _graph_step(m, r, data, adj),
        )


def measure_many(builders: dict[str, StepBuilder], rounds: int, steps: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per step of every variant in each of ``rounds`` rounds.

    Each round builds every variant afresh (so no variant keeps one memory layout that happens to be fast or slow:
    two identical variants built once differ by up to ~10 % on this machine), runs ``warmup`` untimed steps
    (optimizer state, allocator), then times ``steps`` steps of each, interleaved, the order rotated and reversed
    from round to round so drift hits all alike. Compare variants per round (:func:`ratio_summary`)."""
    if rounds < 1 or steps < 1:
        raise ValueError(f"rounds and steps must be >= 1, got {rounds}, {steps}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    names = list(builders)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        shift = r % len(names)
        order = names[shift:] + names[:shift]
        if r % 2:
            order.reverse()
        fns = {name: builders[name]() for name in order}
        for fn in fns.values():
            for _ in range(warmup):
                fn()
        for name in order:
            start = time.perf_counter()
            for _ in range(steps):
                fns[name]()
            times[name].append((time.perf_counter() - start) / steps)
        del fns
    return times


def ratio_summary(times: dict[str, list[float]], name: str, reference: str = "vanilla") -> tuple[float, float, float]:
    """Median, first and third quartile of the per-round ratio ``times[name] / times[reference]`` (rounds pair
    the variants: both ran under the same machine state)."""
    ratios = [a / b for a, b in zip(times[name], times[reference], strict=True)]
    q1, median, q3 = statistics.quantiles(ratios, n=4, method="inclusive") if len(ratios) > 1 else ratios * 3
    return median, q1, q3


def _iqr(ratio: tuple[float, float, float]) -> str:
    return f"{ratio[1]:.2f}–{ratio[2]:.2f}"


def method_overhead_table(methods: list[str], rounds: int = 9, steps: int = 20):  # type: ignore[no-untyped-def]
    """DataFrame: MLP-4 training-step time of every RQ2 method (a batch of 100 MNIST-shaped inputs, the
    regularized layer ``layer4``, weight 1) relative to vanilla — median and interquartile range of the per-round
    ratios (:func:`measure_many`) — with the A/A control row (:data:`CONTROL`) as the noise floor."""
    import pandas as pd

    from .baselines import METHODS, build_method, layer_width

    unknown = set(methods) - {*METHODS, "nsr", "label-smoothing", "dropout"}
    if unknown:
        raise ValueError(f"unknown methods {sorted(unknown)}")
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(100, 1, 28, 28, generator=gen), torch.randint(0, 10, (100,), generator=gen)

    def builder(method: str | None) -> StepBuilder:
        def make() -> Callable[[], None]:
            torch.manual_seed(0)
            model = models.mlp(4, dropout=0.2 if method == "dropout" else 0.0)
            extra: list[torch.nn.Module] = []
            if method == "nsr":
                reg = NeuronSteadiness(10, 5, 1.0)
                reg.attach(model, "layer4")
                extra.append(reg)
            elif method in METHODS:
                width = layer_width(model, "layer4", x)
                extra.append(build_method(method, 1.0, "layer4", 10, width).attach(model))
            return _image_step(model, x, y, extra, smoothing=0.1 if method == "label-smoothing" else 0.0)

        return make

    names = ["vanilla", CONTROL, *methods]
    times = measure_many({name: builder(None if name in ("vanilla", CONTROL) else name) for name in names}, rounds, steps)
    rows = []
    for name in names:
        ratio = ratio_summary(times, name)
        rows.append({"method": name, "step (ms)": 1e3 * statistics.median(times[name]), "ratio to vanilla": ratio[0],
                     "ratio IQR": _iqr(ratio)})
    return pd.DataFrame(rows)


PAPER = {k: n / v for k, (v, n) in PAPER_EPOCH_SECONDS.items()}


def overhead_table(names: list[str], rounds: int = 15, steps: int = 20, resnet_batch: int = 32, resnet_width: int = 64):  # type: ignore[no-untyped-def]
    """DataFrame: median step time vanilla / NSR, their ratio (median and interquartile range of the per-round
    ratios), the A/A control's ratio (noise floor, :data:`CONTROL`), per-epoch time (steps per epoch × median step)
    and the paper's (Table 6)."""
    import pandas as pd

    rows = []
    for name, per_epoch, builders in cases(names, resnet_batch, resnet_width):
        k = steps if name == "MLP-4" else max(3, steps // 4)
        times = measure_many(builders, rounds, k)
        v, n = statistics.median(times["vanilla"]), statistics.median(times["NSR"])
        ratio = ratio_summary(times, "NSR")
        paper_v, paper_n = PAPER_EPOCH_SECONDS[name]
        rows.append({"model": name, "vanilla step (ms)": 1e3 * v, "NSR step (ms)": 1e3 * n, "ratio": ratio[0],
                     "ratio IQR": _iqr(ratio), "A/A ratio": ratio_summary(times, CONTROL)[0],
                     "vanilla epoch (s)": v * per_epoch, "NSR epoch (s)": n * per_epoch,
                     "paper vanilla epoch (s)": paper_v, "paper NSR epoch (s)": paper_n, "paper ratio": paper_n / paper_v})
    return pd.DataFrame(rows)


def _activation_bytes(model: torch.nn.Module, *inputs: Any) -> int:
    total = 0

    def hook(_m: torch.nn.Module, _i: Any, out: Any) -> None:
        nonlocal total
        if isinstance(out, torch.Tensor):
            total += out.numel() * out.element_size()

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook) for m in leaves]
    with torch.no_grad():
        model(*inputs)
    for h in handles:
        h.remove()
    return total


def space_table(queue_length: int = 5):  # type: ignore[no-untyped-def]
    """DataFrame of bytes: NSR queue (M·J·(N+1) floats + running totals) vs the weights vs one batch of activations."""
    import pandas as pd

    rows = []
    specs = [
        ("MLP-4", lambda: models.mlp(4), "layer4", (torch.rand(100, 784),), 10, 100),
        ("ResNet-18", lambda: models.resnet18_cifar(), "fc", (torch.rand(100, 3, 32, 32),), 10, 100),
        ("ResNet-50 (ImageNet)", lambda: models.resnet50(), "avgpool", (torch.rand(2, 3, 224, 224),), 1000, 256),
    ]
    for name, build, layer, inputs, classes, batch in specs:
        model = build().eval()
        reg = NeuronSteadiness(classes, queue_length)
        reg.attach(model, layer)
        model(*inputs)
        width = reg.responses[0].numel()
        reg.detach()
        queue = (queue_length + 1) * classes * (width + 1) * 4
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        acts = _activation_bytes(model, *inputs) * batch // inputs[0].shape[0]
        rows.append({"model": name, "layer": layer, "N": width, "J": classes, "M": queue_length,
                     "NSR queue (KiB)": queue / 1024, "weights (KiB)": weights / 1024,
                     "layer output, one batch (KiB)": batch * width * 4 / 1024,
                     "all activations, one batch (KiB)": acts / 1024, "queue / weights": queue / weights})
    return pd.DataFrame(rows)
