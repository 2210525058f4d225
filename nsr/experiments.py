"""Run specs: one dict describes one training run; grids of them run resumably, in parallel processes.

A spec holds everything that defines a run, e.g.::

    {"dataset": "mnist", "model": "mlp", "depth": 4, "nsr_weight": 7.487, "nsr_layers": ["layer4"],
     "seed": 0, "epochs": 100, "lr": 0.01, "batch_size": 100}

Keys (defaults in brackets): ``dataset``; ``model`` (mlp, resnet18, vgg19, gcn, sage); ``depth`` (MLP / GNN
depth); ``width`` [64] (ResNet); ``batch_norm`` [False] and ``dropout`` [0.0 for images, 0.5 for graphs];
``train_subset`` / ``val_subset`` / ``test_subset`` [all] (first n samples of each image split);
``split_seed`` [0 for images; the run's seed for graphs]; ``variant`` (a free label such as "vanilla" or
"nsr", used by the tables); and every field of :class:`nsr.train.TrainConfig`.
:func:`run_grid` runs the specs whose key is not yet in the results file, each in a worker process with one
thread, and appends one line per finished run.
"""

from __future__ import annotations

import functools
import math
import multiprocessing
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import fields
from typing import Any

import torch
from tqdm.auto import tqdm

from . import data as nsr_data
from . import models
from .measures import select_layer
from .results import ResultStore, spec_key, versions
from .train import TrainConfig, adjacency, train_classifier, train_node_classifier

__all__ = ["build_model", "load_data", "run_spec", "run_grid", "train_config"]

_CONFIG_FIELDS = {f.name for f in fields(TrainConfig)}
_SPEC_FIELDS = _CONFIG_FIELDS | {
    "dataset", "model", "depth", "width", "batch_norm", "dropout", "train_subset", "val_subset",
    "test_subset", "split_seed", "variant", "experiment", "threads", "measure_layers", "combo", "input_dropout",
    "path", "method", "method_weight", "method_layer",
}


@functools.lru_cache(maxsize=4)
def _cached(name: str, split_seed: int) -> Any:
    return nsr_data.load(name, split_seed=split_seed)


def load_data(spec: Mapping[str, Any]) -> Any:
    """The spec's dataset (cached per process), with its subsets applied."""
    name = spec["dataset"]
    graph = name in nsr_data.GRAPH_DATASETS
    split_seed = int(spec.get("split_seed", spec.get("seed", 0) if graph else 0))
    data = _cached(name, split_seed) if name != "imagenet" else nsr_data.load(name, path=spec.get("path"))
    if not graph and any(spec.get(k) for k in ("train_subset", "val_subset", "test_subset")):
        data = data.subset(spec.get("train_subset"), spec.get("val_subset"), spec.get("test_subset"))
    return data


def build_model(spec: Mapping[str, Any], data: Any) -> torch.nn.Module:
    """The spec's model for ``data`` (seed the RNG first for a reproducible initialisation)."""
    kind = spec["model"]
    # an option a model does not have must fail, not be silently ignored (a run would repeat vanilla)
    unsupported = [k for k, models_with in (("dropout", ("mlp", "lenet", "gcn", "sage")), ("batch_norm", ("mlp",)))
                   if spec.get(k) and kind not in models_with]
    if unsupported:
        raise ValueError(f"model {kind!r} has no option {unsupported[0]!r} (given {spec[unsupported[0]]!r}); "
                         f"remove it from the spec")
    if kind == "mlp":
        return models.mlp(
            int(spec["depth"]),
            in_features=math.prod(data.input_shape),
            num_classes=data.num_classes,
            batch_norm=bool(spec.get("batch_norm", False)),
            dropout=float(spec.get("dropout", 0.0)),
        )
    if kind == "resnet18":
        return models.resnet18_cifar(data.num_classes, int(spec.get("width", 64)), data.input_shape[0])
    if kind == "lenet":
        return models.lenet(data.num_classes, data.input_shape[0], float(spec.get("dropout", 0.0)))
    if kind == "resnet50":
        return models.resnet50(data.num_classes)
    if kind == "vgg19":
        return models.vgg19_cifar(data.num_classes, data.input_shape[0])
    if kind in ("gcn", "sage"):
        return models.gnn(
            kind, int(spec["depth"]), data.num_features, int(data.num_classes),
            float(spec.get("dropout", 0.5)), float(spec.get("input_dropout", 0.0)),
        )
    raise ValueError(f"unknown model {kind!r}; choose mlp, lenet, resnet18, vgg19, resnet50, gcn or sage")


def train_config(spec: Mapping[str, Any]) -> TrainConfig:
    return TrainConfig(**{k: v for k, v in spec.items() if k in _CONFIG_FIELDS})


def run_spec(spec: Mapping[str, Any], progress: bool = False) -> dict[str, Any]:
    """Train the run ``spec`` describes and return its results record."""
    unknown = set(spec) - _SPEC_FIELDS
    if unknown:
        raise ValueError(f"unknown spec keys {sorted(unknown)}; known keys: {sorted(_SPEC_FIELDS)}")
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    data = load_data(spec)
    cfg = train_config({**spec, "progress": progress})
    torch.manual_seed(cfg.seed)
    model = build_model(spec, data)
    start = time.time()
    graph = spec["dataset"] in nsr_data.GRAPH_DATASETS
    methods = []
    if spec.get("method"):
        from .baselines import build_method, layer_width

        layer = spec.get("method_layer")
        width = None
        if layer and spec["method"].startswith("center"):
            example = (data.x, adjacency(data)) if graph else (data.train_x[:2],)
            width = layer_width(model, layer, *example)
        methods.append(build_method(spec["method"], float(spec.get("method_weight", 0.0)), layer, int(data.num_classes), width))
    result = (train_node_classifier if graph else train_classifier)(model, data, cfg, methods)
    metrics: dict[str, Any] = result.metrics()
    if spec.get("measure_layers"):
        # aggregated variance of every candidate layer of the trained model on the training set (layer choice)
        if graph:
            batches: Any = ((data.x, adjacency(data)), data.y)
            mask = data.train_mask
        else:
            chunk = cfg.eval_batch_size
            batches = [(data.train_x[i : i + chunk], data.train_y[i : i + chunk]) for i in range(0, len(data.train_y), chunk)]
            mask = None
        _, metrics["layer_variances"] = select_layer(model, batches, list(spec["measure_layers"]), int(data.num_classes), mask)
    return {
        "key": spec_key(spec),
        "spec": dict(spec),
        "metrics": metrics,
        "history": result.history,
        "wall_time": time.time() - start,
        "versions": versions(),
    }


def _worker_init() -> None:
    torch.set_num_threads(1)


def _run_and_store(spec: Mapping[str, Any], path: str) -> dict[str, Any]:
    record = run_spec(spec)
    ResultStore(path).append(record)
    return record


def run_grid(
    specs: Sequence[Mapping[str, Any]],
    store: ResultStore,
    workers: int = 1,
    progress: bool = True,
    execute: bool = True,
) -> list[dict[str, Any]]:
    """Run every spec not yet in ``store``; return the records of all ``specs`` (old and new).

    ``workers > 1`` runs specs in that many spawned processes with one thread each. Datasets are prepared
    once in this process before fanning out (and loading is file-locked in any case). ``execute=False`` runs
    nothing and returns the records already there (to tabulate a protocol that is still running).
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    keys = [spec_key(s) for s in specs]
    if len(set(keys)) != len(keys):
        raise ValueError("specs contain duplicates")
    done = store.keys()
    pending = [s for s, k in zip(specs, keys) if k not in done] if execute else []
    for name in sorted({(s["dataset"], int(s.get("split_seed", 0))) for s in pending}):
        _cached(*name)
    bar = tqdm(total=len(specs), initial=len(specs) - len(pending), desc="runs", disable=not progress)
    if workers == 1 or len(pending) <= 1:
        for spec in pending:
            _run_and_store(spec, str(store.path))
            bar.update()
    else:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context, initializer=_worker_init) as pool:
            futures = [pool.submit(_run_and_store, spec, str(store.path)) for spec in pending]
            for future in as_completed(futures):
                future.result()
                bar.update()
    bar.close()
    by_key = {r["key"]: r for r in store.records()}
    return [by_key[k] for k in keys if k in by_key]
