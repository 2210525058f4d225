"""Training-step time with and without NSR, side by side in one process (appendix E, Table 6).

For each model the vanilla and the NSR step run interleaved (alternating order, R rounds of k steps) and the
script prints the median step time of each and their ratio. The paper reports 1.16× (MLP-4), 1.07×
(ResNet-18) and 1.16× (GraphSAGE-2); NSR's own work is O(B·N) on one layer, so the physical limit is ~1.00×.

    python benchmarks/overhead.py [--rounds 15] [--steps 20] [--threads 1] [--only mlp4 resnet18 sage2]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from nsr import NeuronSteadiness, models
from nsr.train import adjacency


def _image_step(model: torch.nn.Module, reg: NeuronSteadiness | None, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step() -> None:
        out = model(x)
        loss = F.cross_entropy(out, y)
        if reg is not None:
            loss = loss + reg.penalty(y)
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


def _pair(build, layer: str, num_classes: int, queue: int, make_step):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    vanilla = build()
    regularized = copy.deepcopy(vanilla)
    reg = NeuronSteadiness(num_classes, queue, 1.0)
    reg.attach(regularized, layer)
    return make_step(vanilla, None), make_step(regularized, reg)


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


def cases(names: list[str]):  # type: ignore[no-untyped-def]
    if "mlp4" in names:
        x, y = torch.rand(100, 1, 28, 28), torch.randint(0, 10, (100,))
        yield "MLP-4 (batch 100, NSR on layer4)", _pair(
            lambda: models.mlp(4), "layer4", 10, 5, lambda m, r: _image_step(m, r, x, y)
        )
    if "resnet18" in names:
        x, y = torch.rand(32, 3, 32, 32), torch.randint(0, 10, (32,))
        yield "ResNet-18 CIFAR (batch 32, 32x32, NSR on fc)", _pair(
            lambda: models.resnet18_cifar(), "fc", 10, 1, lambda m, r: _image_step(m, r, x, y)
        )
    if "sage2" in names:
        data, what = amazon_computers_graph()
        adj = adjacency(data)
        yield f"GraphSAGE-2 full batch ({what}, NSR on layer1)", _pair(
            lambda: models.gnn("sage", 2, data.x.shape[1], int(data.num_classes)),
            "layer1",
            int(data.num_classes),
            5,
            lambda m, r: _graph_step(m, r, data, adj),
        )


def measure(vanilla: Callable[[], None], nsr: Callable[[], None], rounds: int, steps: int) -> tuple[float, float]:
    for fn in (vanilla, nsr):
        for _ in range(max(2, steps // 4)):
            fn()
    times: dict[str, list[float]] = {"vanilla": [], "nsr": []}
    for r in range(rounds):
        order = [("vanilla", vanilla), ("nsr", nsr)]
        for name, fn in order if r % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            for _ in range(steps):
                fn()
            times[name].append((time.perf_counter() - start) / steps)
    return statistics.median(times["vanilla"]), statistics.median(times["nsr"])


PAPER = {"MLP-4": 2.54 / 2.19, "ResNet-18": 16.56 / 15.45, "GraphSAGE-2": 0.0569 / 0.0489}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", nargs="*", default=["mlp4", "resnet18", "sage2"])
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    print(f"{'model':58s} {'vanilla ms':>10s} {'NSR ms':>8s} {'ratio':>6s} {'paper':>6s}")
    for name, (vanilla, nsr) in cases(args.only):
        steps = args.steps if "MLP" in name else max(3, args.steps // 4)
        v, n = measure(vanilla, nsr, args.rounds, steps)
        paper = next((p for k, p in PAPER.items() if name.startswith(k)), float("nan"))
        rows.append({"model": name, "vanilla_s": v, "nsr_s": n, "ratio": n / v, "paper_ratio": paper})
        print(f"{name:58s} {v * 1e3:10.3f} {n * 1e3:8.3f} {n / v:6.3f} {paper:6.3f}", flush=True)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"threads": args.threads, "rows": rows}, handle, indent=1)


if __name__ == "__main__":
    main()
