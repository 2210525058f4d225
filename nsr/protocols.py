"""The paper's protocols as grids of run specs (see :mod:`nsr.experiments`), and their lambda tables.

The notebooks call these functions with the parameters of their scale (quick / cpu / gpu), so the background
runs, the notebooks and the book all produce and read the same results records.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "MLP_LAMBDA",
    "CNN_LAMBDA",
    "GNN_LAMBDA",
    "PAPER_MLP_ERROR",
    "mlp_protocol",
    "mlp_main_specs",
    "mlp_nsr_specs",
    "mlp_rq3_specs",
    "mlp_rq4_specs",
    "mlp_queue_specs",
    "chosen_layers",
    "run_mlp_chapter",
]

#: Appendix Table 2 (lambda for MLP and CNN).
MLP_LAMBDA = {3: 0.025, 4: 7.487, 6: 0.054, 8: 0.254, 10: 0.416}
CNN_LAMBDA = {"resnet18": 0.05, "vgg19": 0.05, "resnet50": 0.40}
#: Appendix Table 3 (lambda for GNNs): dataset -> depth -> (GraphSAGE, GCN).
GNN_LAMBDA = {
    "pubmed": {2: (0.3909, 0.0367), 3: (0.1436, 0.1994), 4: (0.5485, 0.8831)},
    "amazon-photo": {2: (0.0012, 0.0069), 3: (0.3485, 0.0855), 4: (0.0001, 0.0024)},
    "amazon-computers": {2: (0.0014, 0.0025), 3: (0.0037, 0.0008), 4: (0.0021, 0.0028)},
    "wikics": {2: (0.0274, 0.0572), 3: (0.0142, 0.0669), 4: (0.2226, 0.0015)},
}
#: The paper's MNIST test error (%) of Table "MLP/CNN" (mean, std): depth -> (vanilla, NSR).
PAPER_MLP_ERROR = {
    3: ((3.09, 0.10), (2.80, 0.08)),
    4: ((2.29, 0.07), (1.64, 0.04)),
    6: ((2.44, 0.09), (1.76, 0.06)),
    8: ((2.87, 0.09), (1.98, 0.09)),
    10: ((3.06, 0.06), (1.72, 0.14)),
}


def mlp_protocol(epochs: int = 100, train_subset: int | None = None, threads: int = 1) -> dict[str, Any]:
    """The authors' MLP / MNIST protocol: SGD lr 0.01, no momentum, batch 100, 100 epochs, M = 5."""
    spec: dict[str, Any] = {
        "dataset": "mnist",
        "model": "mlp",
        "epochs": int(epochs),
        "lr": 0.01,
        "batch_size": 100,
        "optimizer": "sgd",
        "momentum": 0.0,
        "queue_length": 5,
        "threads": threads,
    }
    if train_subset:
        spec["train_subset"] = int(train_subset)
    return spec


def _layers(depth: int) -> list[str]:
    return [f"layer{k}" for k in range(2, depth + 1)]


def mlp_main_specs(depths: Sequence[int], seeds: Sequence[int], base: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Vanilla MLP-L runs; they also measure every layer's aggregated variance (for the layer choice)."""
    return [
        {**base, "experiment": "mlp-main", "variant": "vanilla", "depth": d, "seed": s,
         "track_layer": f"layer{d}", "measure_layers": _layers(d)}
        for d in depths
        for s in seeds
    ]


def chosen_layers(vanilla_records: Sequence[Mapping[str, Any]]) -> dict[int, str]:
    """Per depth, the layer with the largest aggregated variance on the trained vanilla model (lowest seed)."""
    out: dict[int, tuple[int, str]] = {}
    for r in vanilla_records:
        d, s = int(r["spec"]["depth"]), int(r["spec"]["seed"])
        variances = r["metrics"].get("layer_variances")
        if variances and (d not in out or s < out[d][0]):
            out[d] = (s, max(variances, key=variances.__getitem__))
    return {d: layer for d, (_, layer) in out.items()}


def mlp_nsr_specs(
    layers: Mapping[int, str], seeds: Sequence[int], base: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """NSR runs of the main table, on the layer chosen per depth, with the paper's lambda."""
    return [
        {**base, "experiment": "mlp-main", "variant": "nsr", "depth": d, "seed": s, "nsr_weight": MLP_LAMBDA[d],
         "nsr_layers": [layer], "track_layer": f"layer{d}"}
        for d, layer in sorted(layers.items())
        for s in seeds
    ]


def mlp_rq3_specs(seeds: Sequence[int], base: Mapping[str, Any], layer: str = "layer4", dropout: float = 0.2) -> list[dict[str, Any]]:
    """RQ3: MLP-4 with batch normalisation, and with dropout, each with and without NSR."""
    specs = []
    for combo, extra in (("bn", {"batch_norm": True}), ("dropout", {"dropout": dropout})):
        for variant in ("vanilla", "nsr"):
            for s in seeds:
                spec = {**base, **extra, "experiment": "mlp-rq3", "combo": combo, "variant": variant, "depth": 4,
                        "seed": s, "track_layer": "layer4"}
                if variant == "nsr":
                    spec.update(nsr_weight=MLP_LAMBDA[4], nsr_layers=[layer])
                specs.append(spec)
    return specs


def mlp_rq4_specs(
    seeds: Sequence[int],
    base: Mapping[str, Any],
    layer_sets: Sequence[Sequence[str]] = (("layer2",), ("layer3",), ("layer3", "layer4")),
) -> list[dict[str, Any]]:
    """RQ4: NSR on other layers of MLP-4 (lambda of MLP-4 for each); layer 4 alone is the main table's run."""
    return [
        {**base, "experiment": "mlp-rq4", "variant": "+".join(layers), "depth": 4, "seed": s,
         "nsr_weight": MLP_LAMBDA[4], "nsr_layers": list(layers), "track_layer": "layer4"}
        for layers in layer_sets
        for s in seeds
    ]


def mlp_queue_specs(lengths: Sequence[int], seeds: Sequence[int], base: Mapping[str, Any], layer: str = "layer4") -> list[dict[str, Any]]:
    """Appendix E, Fig. 3: MLP-4 with NSR for several memory-queue lengths M."""
    return [
        {**base, "experiment": "mlp-queue", "variant": "nsr", "depth": 4, "seed": s, "queue_length": int(m),
         "nsr_weight": MLP_LAMBDA[4], "nsr_layers": [layer], "track_layer": "layer4"}
        for m in lengths
        for s in seeds
    ]


def run_mlp_chapter(
    store: Any,
    depths: Sequence[int] = (3, 4, 6, 8, 10),
    seeds: Sequence[int] = (0, 1, 2),
    epochs: int = 100,
    train_subset: int | None = None,
    queue_lengths: Sequence[int] = (1, 2, 10, 20),
    workers: int = 1,
    progress: bool = True,
) -> dict[str, list[dict[str, Any]]]:
    """Every run of the MLP chapter, in order: vanilla table, layer choice, NSR table, RQ3, RQ4, queue length.

    Resumable: runs already in ``store`` (an :class:`nsr.results.ResultStore`) are skipped.
    """
    from .experiments import run_grid

    base = mlp_protocol(epochs, train_subset)
    out: dict[str, list[dict[str, Any]]] = {}
    out["vanilla"] = run_grid(mlp_main_specs(depths, seeds, base), store, workers, progress)
    layers = chosen_layers(out["vanilla"])
    out["nsr"] = run_grid(mlp_nsr_specs(layers, seeds, base), store, workers, progress)
    if 4 in depths:
        out["rq3"] = run_grid(mlp_rq3_specs(seeds, base), store, workers, progress)
        out["rq4"] = run_grid(mlp_rq4_specs(seeds, base), store, workers, progress)
        out["queue"] = run_grid(mlp_queue_specs(queue_lengths, seeds, base), store, workers, progress)
    return out
