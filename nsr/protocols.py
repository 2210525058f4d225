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
    "run_gnn_chapter",
    "run_cnn_chapter",
    "cnn_gpu_specs",
    "tag_settings",
    "baselines_table",
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
    execute: bool = True,
) -> dict[str, list[dict[str, Any]]]:
    """Every run of the MLP chapter, in order: vanilla table, layer choice, NSR table, RQ3, RQ4, queue length.

    Resumable: runs already in ``store`` (an :class:`nsr.results.ResultStore`) are skipped; with
    ``execute=False`` nothing runs and the records present are returned.
    """
    from .experiments import run_grid

    base = mlp_protocol(epochs, train_subset)
    out: dict[str, list[dict[str, Any]]] = {}
    out["vanilla"] = run_grid(mlp_main_specs(depths, seeds, base), store, workers, progress, execute)
    layers = chosen_layers(out["vanilla"])
    out["nsr"] = run_grid(mlp_nsr_specs(layers, seeds, base), store, workers, progress, execute)
    if 4 in depths:
        out["rq3"] = run_grid(mlp_rq3_specs(seeds, base), store, workers, progress, execute)
        out["rq4"] = run_grid(mlp_rq4_specs(seeds, base), store, workers, progress, execute)
        out["queue"] = run_grid(mlp_queue_specs(queue_lengths, seeds, base), store, workers, progress, execute)
    return out


# ----------------------------------------------------------------------------- GNNs
#: The paper's GNN test error (%), Table "GNN" (mean, std): dataset -> kind -> depth -> (vanilla, NSR).
PAPER_GNN_ERROR = {
    "pubmed": {"sage": {2: ((10.73, 0.06), (9.89, 0.08)), 3: ((10.20, 0.25), (9.48, 0.12)), 4: ((10.43, 0.17), (9.79, 0.19))},
               "gcn": {2: ((12.02, 0.00), (11.92, 0.00)), 3: ((12.76, 0.18), (12.19, 0.11)), 4: ((14.01, 0.07), (12.96, 0.08))}},
    "amazon-photo": {"sage": {2: ((5.82, 0.00), (4.54, 0.10)), 3: ((5.20, 0.14), (4.86, 0.13)), 4: ((6.37, 0.30), (5.62, 0.59))},
                     "gcn": {2: ((6.73, 0.00), (6.27, 0.00)), 3: ((8.00, 0.11), (7.96, 0.10)), 4: ((10.24, 0.14), (9.03, 0.25))}},
    "amazon-computers": {"sage": {2: ((11.37, 0.55), (10.47, 0.05)), 3: ((11.88, 1.05), (10.22, 0.54)), 4: ((15.49, 0.90), (12.86, 0.82))},
                         "gcn": {2: ((12.17, 0.07), (10.86, 0.03)), 3: ((14.90, 0.25), (13.66, 0.12)), 4: ((18.07, 0.74), (16.02, 0.23))}},
    "wikics": {"sage": {2: ((16.81, 0.21), (16.06, 0.33)), 3: ((15.97, 0.18), (15.27, 0.21)), 4: ((16.63, 0.31), (15.43, 0.24))},
               "gcn": {2: ((18.41, 0.06), (17.99, 0.05)), 3: ((18.66, 0.23), (18.10, 0.27)), 4: ((19.21, 0.31), (18.84, 0.26))}},
}


def gnn_protocol(epochs: int = 200, threads: int = 1) -> dict[str, Any]:
    """The GNN protocol this book chose (the paper states none): Adam lr 0.01, weight decay 5e-4, dropout 0.5
    on hidden layers, full batch, ``epochs`` epochs with best-validation selection, a random 60/20/20 split
    per seed, memory queue M = 5 (full batch: the queue spans the last 5 epochs' training nodes)."""
    return {"model": None, "epochs": int(epochs), "lr": 0.01, "optimizer": "adam", "weight_decay": 5e-4,
            "dropout": 0.5, "queue_length": 5, "threads": threads}


def paper_gnn_lambda(dataset: str, kind: str, depth: int) -> float | None:
    """Appendix Table 3's lambda, or None where the paper has none (Cora, CiteSeer)."""
    row = GNN_LAMBDA.get(dataset, {}).get(depth)
    return None if row is None else row[0 if kind == "sage" else 1]


def gnn_vanilla_specs(datasets: Sequence[str], kinds: Sequence[str], depths: Sequence[int], seeds: Sequence[int],
                      base: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Vanilla GNN runs; they measure every layer's aggregated variance on the training nodes."""
    return [
        {**base, "experiment": "gnn-main", "variant": "vanilla", "dataset": ds, "model": k, "depth": d, "seed": s,
         "track_layer": "layer1", "measure_layers": [f"layer{i}" for i in range(1, d + 1)]}
        for ds in datasets for k in kinds for d in depths for s in seeds
    ]


def gnn_chosen_layers(vanilla_records: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str, int], str]:
    """(dataset, kind, depth) -> the layer with the largest aggregated variance (trained vanilla, lowest seed)."""
    best: dict[tuple[str, str, int], tuple[int, str]] = {}
    for r in vanilla_records:
        sp = r["spec"]
        key = (sp["dataset"], sp["model"], int(sp["depth"]))
        v = r["metrics"].get("layer_variances")
        if v and (key not in best or sp["seed"] < best[key][0]):
            best[key] = (sp["seed"], max(v, key=v.__getitem__))
    return {k: layer for k, (_, layer) in best.items()}


def gnn_nsr_specs(layers: Mapping[tuple[str, str, int], str], seeds: Sequence[int], base: Mapping[str, Any],
                  weights: Mapping[tuple[str, str, int], float] | None = None, variant: str = "nsr-paper") -> list[dict[str, Any]]:
    """NSR runs on the chosen layers, with the paper's lambda (default) or the given ``weights``."""
    specs = []
    for (ds, k, d), layer in sorted(layers.items()):
        weight = (weights or {}).get((ds, k, d)) if weights is not None else paper_gnn_lambda(ds, k, d)
        if weight is None:
            continue
        for s in seeds:
            specs.append({**base, "experiment": "gnn-main", "variant": variant, "dataset": ds, "model": k, "depth": d,
                          "seed": s, "nsr_weight": float(weight), "nsr_layers": [layer], "track_layer": layer})
    return specs


def gnn_lambda_grid_specs(layers: Mapping[tuple[str, str, int], str], grid: Sequence[float], seed: int,
                          base: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One seed per lambda of ``grid`` for each setting; the lambda is then chosen on validation accuracy."""
    return [
        {**base, "experiment": "gnn-lambda", "variant": "nsr-grid", "dataset": ds, "model": k, "depth": d,
         "seed": seed, "nsr_weight": float(w), "nsr_layers": [layer], "track_layer": layer}
        for (ds, k, d), layer in sorted(layers.items()) for w in grid
    ]


def choose_lambda(grid_records: Sequence[Mapping[str, Any]]) -> dict[tuple[str, str, int], float]:
    """Per setting, the grid lambda with the best validation accuracy (ties: the smaller lambda). Never the test set."""
    best: dict[tuple[str, str, int], tuple[float, float]] = {}
    for r in grid_records:
        sp = r["spec"]
        key = (sp["dataset"], sp["model"], int(sp["depth"]))
        score = (r["metrics"]["best_val_acc"], -sp["nsr_weight"])
        if key not in best or score > best[key]:
            best[key] = score
    return {k: -v[1] for k, v in best.items()}


def gnn_rq4_specs(seeds: Sequence[int], base: Mapping[str, Any], dataset: str = "amazon-computers") -> list[dict[str, Any]]:
    """RQ4 for GNNs: GraphSAGE-2 with NSR on layer 1, layer 2 and both, the paper's lambda."""
    weight = paper_gnn_lambda(dataset, "sage", 2) or 0.01
    return [
        {**base, "experiment": "gnn-rq4", "variant": "+".join(layers), "dataset": dataset, "model": "sage", "depth": 2,
         "seed": s, "nsr_weight": weight, "nsr_layers": list(layers), "track_layer": "layer1"}
        for layers in (("layer1",), ("layer2",), ("layer1", "layer2")) for s in seeds
    ]


def run_gnn_chapter(
    store: Any,
    datasets: Sequence[str] = ("amazon-computers", "amazon-photo", "cora", "citeseer"),
    kinds: Sequence[str] = ("sage", "gcn"),
    depths: Sequence[int] = (2, 3, 4),
    seeds: Sequence[int] = (0, 1, 2),
    epochs: int = 200,
    lambda_grid: Sequence[float] = (0.01, 0.1, 1.0),
    workers: int = 1,
    progress: bool = True,
    focus_dataset: str = "amazon-computers",
    execute: bool = True,
    paper_depths: Sequence[int] = (),
) -> dict[str, list[dict[str, Any]]]:
    """Every run of the GNN chapter in order (resumable): vanilla, layer choice, NSR with the paper's lambda,
    the lambda grid on seed ``seeds[0]`` (validation only), NSR with the chosen lambda, RQ4 on ``focus_dataset``.

    ``paper_depths`` (e.g. ``(3, 4)``) adds, after all of that, the deeper models of the paper's table on the
    datasets Table 3 gives a lambda for: vanilla and NSR with the paper's lambda only (no lambda grid), so a
    slow machine can cover the table's rows without the full search at every depth."""
    from . import data as nsr_data
    from .experiments import run_grid

    base = gnn_protocol(epochs)
    out: dict[str, list[dict[str, Any]]] = {"not_run": []}
    reachable = []
    for ds in datasets:
        try:
            nsr_data.load(ds)
            reachable.append(ds)
        except nsr_data.DatasetNotAvailable as err:
            out["not_run"].append({"dataset": ds, "reason": str(err)})
    out["vanilla"] = run_grid(gnn_vanilla_specs(reachable, kinds, depths, seeds, base), store, workers, progress, execute)
    layers = gnn_chosen_layers(out["vanilla"])
    out["nsr-paper"] = run_grid(gnn_nsr_specs(layers, seeds, base), store, workers, progress, execute)
    out["grid"] = run_grid(gnn_lambda_grid_specs(layers, lambda_grid, seeds[0], base), store, workers, progress, execute)
    chosen = choose_lambda(out["grid"])
    out["nsr-val"] = run_grid(gnn_nsr_specs(layers, seeds, base, chosen, "nsr-val"), store, workers, progress, execute)
    if focus_dataset in reachable and "sage" in kinds and 2 in depths:
        out["rq4"] = run_grid(gnn_rq4_specs(seeds, base, focus_dataset), store, workers, progress, execute)
        # the dynamics figure compares one layer: a vanilla run that tracks the layer NSR regularizes
        layer = layers.get((focus_dataset, "sage", 2))
        dyn = [r["spec"] for r in out["vanilla"] if (r["spec"]["dataset"], r["spec"]["model"], r["spec"]["depth"],
                                                      r["spec"]["seed"]) == (focus_dataset, "sage", 2, seeds[0])]
        if layer is not None and dyn:  # (tabulating a protocol still running: seed 0 may not have finished)
            spec = {k: v for k, v in dyn[0].items() if k != "measure_layers"}
            out["dynamics"] = run_grid([{**spec, "experiment": "gnn-dynamics", "track_layer": layer}], store, workers,
                                       progress, execute)
    extra = sorted(set(paper_depths) - set(depths))
    paper_datasets = [ds for ds in reachable if any(paper_gnn_lambda(ds, k, d) is not None for k in kinds for d in extra)]
    if extra and paper_datasets:
        deeper = run_grid(gnn_vanilla_specs(paper_datasets, kinds, extra, seeds, base), store, workers, progress, execute)
        out["vanilla"] += deeper
        out["nsr-paper"] += run_grid(gnn_nsr_specs(gnn_chosen_layers(deeper), seeds, base), store, workers, progress, execute)
    return out


# ----------------------------------------------------------------------------- CNNs
#: The paper's CNN test error (%) (mean, std): (vanilla, NSR); ResNet-50 is top-5 error.
PAPER_CNN_ERROR = {
    ("resnet18", "strong"): ((4.22, 0.07), (3.74, 0.08)),
    ("vgg19", "strong"): ((9.19, 0.18), (8.09, 0.17)),
    ("resnet50", "strong"): ((7.82, 0.09), (6.98, 0.08)),
    ("resnet18", "fcnn"): ((7.96, 0.12), (7.20, 0.09)),
    ("vgg19", "fcnn"): ((10.57, 0.17), (8.77, 0.10)),
}

#: Tier 1, the authors' strong setting (GPU and the real datasets): spec fields per model.
CNN_GPU_RECIPES: dict[str, dict[str, Any]] = {
    "resnet18": {"dataset": "cifar10", "model": "resnet18", "epochs": 200, "lr": 0.1, "batch_size": 100, "optimizer": "sgd",
                 "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4, "milestones": [60, 120, 160], "gamma": 0.2,
                 "augment": "cifar-cutout", "nsr_layers": ["fc"], "queue_length": 1, "workers": 4},
    "vgg19": {"dataset": "cifar10", "model": "vgg19", "epochs": 200, "lr": 0.1, "batch_size": 100, "optimizer": "sgd",
              "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4, "milestones": [60, 120, 160], "gamma": 0.2,
              "augment": "cifar", "nsr_layers": ["classifier"], "queue_length": 1, "workers": 4},
    "resnet50": {"dataset": "imagenet", "model": "resnet50", "epochs": 90, "lr": 0.1, "batch_size": 256, "optimizer": "sgd",
                 "momentum": 0.9, "weight_decay": 1e-4, "milestones": [30, 60], "gamma": 0.1, "nsr_layers": ["avgpool"],
                 "queue_length": 1, "workers": 8},
}


def cnn_gpu_specs(models_: Sequence[str], seeds: Sequence[int], queue_length: int | None = None,
                  device: str = "cuda", amp: bool = True, imagenet_path: str | None = None) -> list[dict[str, Any]]:
    """Vanilla and NSR runs of tier 1 (lambda from Table 2; M = 1 as the authors' CNN code, or ``queue_length``)."""
    specs = []
    for m in models_:
        recipe = dict(CNN_GPU_RECIPES[m])
        layers = recipe.pop("nsr_layers")
        if queue_length is not None:
            recipe["queue_length"] = queue_length
        if m == "resnet50" and imagenet_path:
            recipe["path"] = imagenet_path
        for s in seeds:
            base = {**recipe, "experiment": "cnn-gpu", "seed": s, "device": device, "amp": amp, "track_layer": layers[0]}
            specs.append({**base, "variant": "vanilla"})
            specs.append({**base, "variant": "nsr", "nsr_weight": CNN_LAMBDA[m], "nsr_layers": layers})
    return specs


def cnn_cpu_protocol(epochs: int = 15, train_subset: int | None = None) -> dict[str, Any]:
    """Tier 2 (this machine): LeNet-5-style CNN, SGD lr 0.05 momentum 0.9, batch 100, M = 5."""
    spec: dict[str, Any] = {"model": "lenet", "epochs": int(epochs), "lr": 0.05, "batch_size": 100, "optimizer": "sgd",
                            "momentum": 0.9, "queue_length": 5, "threads": 1}
    if train_subset:
        spec["train_subset"] = int(train_subset)
    return spec


_LENET_LAYERS = ["block1", "block2", "fc1", "fc2", "fc3"]


def run_cnn_chapter(
    store: Any,
    datasets: Sequence[str] = ("fashion-mnist", "mnist"),
    seeds: Sequence[int] = (0, 1, 2),
    epochs: int = 15,
    train_subset: int | None = None,
    lambda_grid: Sequence[float] = (0.01, 0.1, 1.0),
    workers: int = 1,
    progress: bool = True,
    execute: bool = True,
) -> dict[str, list[dict[str, Any]]]:
    """Tier 2, resumable: vanilla LeNet runs (measuring every layer), the layer choice, a lambda grid on seed
    ``seeds[0]`` chosen on validation accuracy, then NSR with the chosen lambda on every seed."""
    from .experiments import run_grid

    base = cnn_cpu_protocol(epochs, train_subset)
    out: dict[str, list[dict[str, Any]]] = {}
    out["vanilla"] = run_grid([
        {**base, "experiment": "cnn-cpu", "variant": "vanilla", "dataset": ds, "seed": s, "track_layer": "fc3",
         "measure_layers": _LENET_LAYERS} for ds in datasets for s in seeds], store, workers, progress, execute)
    chosen: dict[str, str] = {}
    for r in sorted(out["vanilla"], key=lambda r: r["spec"]["seed"], reverse=True):
        v = r["metrics"]["layer_variances"]
        chosen[r["spec"]["dataset"]] = max(v, key=v.__getitem__)
    grid = [{**base, "experiment": "cnn-lambda", "variant": "nsr-grid", "dataset": ds, "seed": seeds[0], "nsr_weight": float(w),
             "nsr_layers": [chosen[ds]], "track_layer": chosen[ds]} for ds in datasets if ds in chosen for w in lambda_grid]
    out["grid"] = run_grid(grid, store, workers, progress, execute)
    best: dict[str, tuple[float, float]] = {}
    for r in out["grid"]:
        ds, score = r["spec"]["dataset"], (r["metrics"]["best_val_acc"], -r["spec"]["nsr_weight"])
        if ds not in best or score > best[ds]:
            best[ds] = score
    out["nsr"] = run_grid([
        {**base, "experiment": "cnn-cpu", "variant": "nsr", "dataset": ds, "seed": s, "nsr_weight": -best[ds][1],
         "nsr_layers": [chosen[ds]], "track_layer": chosen[ds]} for ds in datasets if ds in best for s in seeds],
        store, workers, progress, execute)
    # the dynamics figure compares one layer: vanilla seed seeds[0] again, tracking the layer NSR regularizes
    out["dynamics"] = run_grid([
        {**base, "experiment": "cnn-dynamics", "variant": "vanilla", "dataset": ds, "seed": seeds[0],
         "track_layer": chosen[ds]} for ds in datasets if ds in best], store, workers, progress, execute)
    return out


# ----------------------------------------------------------------------------- baselines (RQ2)
#: The paper's RQ2 table, test error % (mean, std): setting -> method -> value.
PAPER_RQ2_ERROR = {
    # dropout and NSR + dropout: the paper's RQ3 table (MLP-4, dropout rate not stated), not its RQ2 search
    "mlp4-mnist": {"vanilla": (2.29, 0.07), "l1": (2.27, 0.05), "l2": (2.27, 0.05), "jacobian": (2.21, 0.04), "nsr": (1.64, 0.04),
                   "dropout": (2.19, 0.04), "nsr+dropout": (1.64, 0.04)},
    "sage2-amazon-computers": {"vanilla": (11.37, 0.55), "l1": (10.81, 0.13), "l2": (10.68, 0.35), "jacobian": (11.27, 0.45), "nsr": (10.52, 0.22)},
}

#: Searched field and log-uniform range per method (the same TPE search for all).
BASELINE_SEARCH = {
    "nsr": ("nsr_weight", 1e-4, 10.0),
    "l1": ("method_weight", 1e-4, 10.0),
    "l2": ("method_weight", 1e-6, 1e-1),
    "jacobian": ("method_weight", 1e-4, 10.0),
    "center": ("method_weight", 1e-4, 10.0),
    "center-running": ("method_weight", 1e-4, 10.0),
    "decov": ("method_weight", 1e-4, 10.0),
    "label-smoothing": ("label_smoothing", 1e-3, 0.5),
    "dropout": ("dropout", 0.02, 0.7),
}


def baseline_settings(train_subset: int | None = None) -> dict[str, dict[str, Any]]:
    """The three settings of the comparison: base spec and the layer NSR / L1 / center / DeCov act on."""
    mlp = {**mlp_protocol(train_subset=train_subset), "depth": 4, "layer": "layer4"}
    sage = {**gnn_protocol(), "dataset": "amazon-computers", "model": "sage", "depth": 2, "layer": "layer1"}
    # LeNet: block2, the layer the CNN chapter's select_layer chose (on both datasets)
    cnn = {**cnn_cpu_protocol(train_subset=train_subset), "dataset": "fashion-mnist", "layer": "block2"}
    return {"mlp4-mnist": mlp, "sage2-amazon-computers": sage, "lenet-fashion-mnist": cnn}


def paper_nsr_weight(setting: str) -> float | None:
    """The paper's lambda for a comparison setting (Table 1 / Table 3; the CPU CNN has none), shown beside the searched one."""
    if setting == "mlp4-mnist":
        return MLP_LAMBDA[4]
    if setting == "sage2-amazon-computers":
        return paper_gnn_lambda("amazon-computers", "sage", 2)
    return None


def tag_settings(records: Sequence[dict[str, Any]], settings: Sequence[str], train_subset: int | None = None) -> Sequence[dict[str, Any]]:
    """Set ``spec["setting"]`` of every record to the comparison setting among ``settings`` whose dataset and model
    it ran (None if none), so tables and paired tests can group by setting; returns ``records``."""
    named = baseline_settings(train_subset)
    for r in records:
        r["spec"]["setting"] = next((n for n in settings if all(r["spec"].get(k) == named[n].get(k) for k in ("dataset", "model"))), None)
    return records


def baselines_table(final: Sequence[Mapping[str, Any]], settings: Sequence[str], methods: Sequence[str], combine: Sequence[str] = ()):  # type: ignore[no-untyped-def]
    """The RQ2 table: per setting (records tagged by :func:`tag_settings`) and method — vanilla, ``methods``, then
    ``nsr+<m>`` for ``m`` in ``combine`` — the searched weight, NSR's λ (and the paper's), test error % mean ± std
    over seeds, the paper's value (:data:`PAPER_RQ2_ERROR`) and paired-test p-values vs vanilla, vs NSR and, for a
    combination, vs the method alone (:func:`nsr.results.paired_comparison`)."""
    import pandas as pd

    from .results import mean_std, paired_comparison

    rows = []
    for setting in settings:
        recs = [r for r in final if r["spec"]["setting"] == setting]
        for method in ["vanilla", *methods, *[f"nsr+{m}" for m in combine]]:
            mine = [r for r in recs if r["spec"]["variant"] == method]
            if not mine:
                continue
            alone = method.removeprefix("nsr+")
            mean, std = mean_std([r["metrics"]["test_error"] for r in mine])
            field = BASELINE_SEARCH.get(alone, (None,))[0] if alone != "nsr" else None
            row = {"setting": setting, "method": method, "weight": mine[0]["spec"].get(field) if field else None,
                   "λ": mine[0]["spec"].get("nsr_weight") if "nsr" in method else None,
                   "paper λ": paper_nsr_weight(setting) if method == "nsr" else None,
                   "test error": mean, "std": std, "seeds": len(mine),
                   "paper": PAPER_RQ2_ERROR.get(setting, {}).get(method, (float("nan"),))[0],
                   "p vs vanilla": float("nan"), "p vs nsr": float("nan"), "p vs alone": float("nan")}
            refs = {"p vs vanilla": "vanilla", "p vs nsr": "nsr", "p vs alone": alone if alone != method else None}
            for column, ref in refs.items():
                if ref is not None and ref != method:
                    t = paired_comparison(recs, ["setting"], "variant", ref, method)
                    row[column] = float(t["p_value"].iloc[0]) if len(t) else float("nan")
            rows.append(row)
    return pd.DataFrame(rows)


def baseline_spec(setting: Mapping[str, Any], method: str, value: float | None, epochs: int, seed: int) -> dict[str, Any]:
    """The run spec of ``method`` in ``setting`` with its searched field set to ``value`` (None: vanilla)."""
    base = {k: v for k, v in setting.items() if k != "layer"}
    spec = {**base, "experiment": "baselines", "variant": method, "epochs": int(epochs), "seed": seed,
            "track_layer": setting["layer"]}
    if method == "vanilla":
        if spec.get("model") in ("gcn", "sage"):
            spec["dropout"] = 0.0  # the comparison's vanilla has no dropout; dropout is a competitor
        return spec
    field, _, _ = BASELINE_SEARCH[method]
    if spec.get("model") in ("gcn", "sage") and method != "dropout":
        spec["dropout"] = 0.0
    if method == "nsr":
        spec["nsr_layers"] = [setting["layer"]]
    elif method not in ("label-smoothing", "dropout"):
        spec["method"] = method
        spec["method_layer"] = setting["layer"] if method in ("l1", "center", "center-running", "decov") else None
    if value is not None:
        spec[field] = float(value)
    return spec


#: Methods NSR can be combined with in the comparison (each at its own searched weight, NSR at its searched lambda).
NSR_COMBINATIONS = tuple(m for m in BASELINE_SEARCH if m != "nsr")


def combination_spec(setting: Mapping[str, Any], method: str, nsr_value: float, value: float, epochs: int,
                     seed: int) -> dict[str, Any]:
    """NSR plus ``method`` in ``setting``: ``method``'s spec at ``value`` with NSR at ``nsr_value`` on the same layer.

    Both weights come from the separate searches (no joint search): the question is whether the two, each tuned
    alone, add up (cf. the paper's RQ3, NSR with batch norm and with dropout).
    """
    if method not in NSR_COMBINATIONS:
        raise ValueError(f"method {method!r} cannot be combined with NSR; choose from {list(NSR_COMBINATIONS)}")
    nsr = baseline_spec(setting, "nsr", nsr_value, epochs, seed)
    spec = baseline_spec(setting, method, value, epochs, seed)
    return {**spec, "variant": f"nsr+{method}", "nsr_layers": nsr["nsr_layers"], "nsr_weight": nsr["nsr_weight"]}


def _search_task(spec: Mapping[str, Any], n_trials: int, database: str, store_path: str, low: float, high: float,
                 field: str, coverage: float | None = None) -> None:
    from .results import ResultStore
    import torch

    from .search import search_weight

    torch.set_num_threads(1)
    search_weight(spec, n_trials, database, ResultStore(store_path), low, high, field=field, coverage=coverage)


def _per_setting(value: int | Mapping[str, int] | None, name: str, default: int, argument: str) -> int:
    if value is None:
        return int(default)
    if isinstance(value, Mapping):
        if name not in value:
            raise ValueError(f"{argument} has no entry for setting {name!r}")
        value = value[name]
    if int(value) < 1:
        raise ValueError(f"{argument} must be positive, got {value!r} for {name!r}")
    return int(value)


def run_baselines_chapter(
    store: Any,
    database: str,
    settings: Sequence[str] = ("mlp4-mnist", "sage2-amazon-computers", "lenet-fashion-mnist"),
    methods: Sequence[str] = tuple(BASELINE_SEARCH),
    n_trials: int = 8,
    search_epochs: int | Mapping[str, int] = 20,
    epochs: int | Mapping[str, int] | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    train_subset: int | None = None,
    workers: int = 1,
    progress: bool = True,
    execute: bool = True,
    combine: Sequence[str] = (),
    coverage: float | None = None,
) -> dict[str, Any]:
    """RQ2, resumable, one setting after the other: a TPE search of each method's weight on a
    ``search_epochs`` schedule (validation accuracy of seed ``seeds[0]``; ``workers`` methods searched at once,
    each study sequential and seeded), then the chosen values at ``epochs`` over ``seeds``, then NSR plus each
    method in ``combine`` (both at their own searched weights, :func:`combination_spec`; variant ``nsr+<method>``).
    ``coverage`` (decades) adds to every search the log-grid points its TPE trials left untried
    (:func:`nsr.search.coverage_grid`), the same rule for every method.

    ``epochs`` and ``search_epochs`` are one number for every setting or a mapping setting -> number;
    ``epochs=None`` uses each setting's own chapter schedule (MLP 100, GraphSAGE 200, LeNet 15 epochs).
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from .experiments import run_grid
    from .search import load_study, rdb_storage

    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    all_settings = baseline_settings(train_subset)
    unknown = set(settings) - set(all_settings)
    if unknown:
        raise ValueError(f"unknown settings {sorted(unknown)}; choose from {sorted(all_settings)}")
    unknown = set(methods) - set(BASELINE_SEARCH)
    if unknown:
        raise ValueError(f"unknown methods {sorted(unknown)}; choose from {sorted(BASELINE_SEARCH)}")
    unknown = set(combine) - set(NSR_COMBINATIONS)
    if unknown:
        raise ValueError(f"combine: unknown methods {sorted(unknown)}; choose from {list(NSR_COMBINATIONS)}")
    missing = [m for m in ("nsr", *combine) if combine and m not in methods]
    if missing:
        raise ValueError(f"combine needs the searches of {missing}: add them to methods")
    out: dict[str, Any] = {"studies": {}, "final": []}
    for name in settings:
        setting = all_settings[name]
        full = _per_setting(epochs, name, setting["epochs"], "epochs")
        short = _per_setting(search_epochs, name, setting["epochs"], "search_epochs")
        searches = {m: (baseline_spec(setting, m, None, short, seeds[0]), *BASELINE_SEARCH[m]) for m in methods}
        if execute:
            tasks = [(spec, n_trials, database, str(store.path), low, high, field, coverage)
                     for spec, field, low, high in searches.values()]
            if workers == 1:
                for task in tasks:
                    _search_task(*task)
            else:
                rdb_storage(database)  # create the schema once before the processes share the file
                context = multiprocessing.get_context("spawn")
                with ProcessPoolExecutor(workers, mp_context=context) as pool:
                    for future in [pool.submit(_search_task, *task) for task in tasks]:
                        future.result()
        finals = [baseline_spec(setting, "vanilla", None, full, s) for s in seeds]
        chosen: dict[str, float] = {}
        for method, (spec, field, low, high) in searches.items():
            study = load_study(spec, database, low, high, field)
            if study is None:
                continue
            out["studies"][(name, method)] = study
            complete = [t for t in study.trials if t.value is not None]
            if complete:
                chosen[method] = max(complete, key=lambda t: t.value).params["weight"]
                finals += [baseline_spec(setting, method, chosen[method], full, s) for s in seeds]
        if "nsr" in chosen:
            finals += [combination_spec(setting, m, chosen["nsr"], chosen[m], full, s)
                       for m in combine if m in chosen for s in seeds]
        out["final"] += run_grid(finals, store, workers, progress, execute)
    return out
