"""Training loops on real data, determinism, and the resumable results store."""

from __future__ import annotations

import json

import pytest
import torch

from nsr import experiments, models, protocols
from nsr.results import ResultStore, paired_comparison, spec_key, summarize
from nsr.train import TrainConfig, train_classifier, train_node_classifier

from conftest import require


@pytest.mark.slow
def test_mlp4_one_epoch_on_mnist_trains_with_and_without_nsr(mnist):
    for weight in (0.0, protocols.MLP_LAMBDA[4]):
        torch.manual_seed(0)
        cfg = TrainConfig(epochs=1, nsr_weight=weight, nsr_layers=("layer4",), track_layer="layer4", progress=False)
        result = train_classifier(models.mlp(4), mnist, cfg)
        assert result.test_acc > 0.8  # chance is 0.1
        h = result.history[0]
        assert h["variance"] > 0 and h["time"] > 0 and h["train_ce"] > 0
        assert (h["nsr_penalty"] > 0) == (weight > 0)


def test_training_is_deterministic_and_pairs_init_and_batches(mnist):
    small = mnist.subset(600, 200, 200)

    def run(weight):
        torch.manual_seed(5)
        cfg = TrainConfig(epochs=2, nsr_weight=weight, nsr_layers=("layer4",), seed=5, progress=False)
        return train_classifier(models.mlp(4), small, cfg).history

    a, b = run(1.0), run(1.0)
    assert [{k: v for k, v in h.items() if k != "time"} for h in a] == [{k: v for k, v in h.items() if k != "time"} for h in b]
    assert run(0.0)[0]["train_ce"] != a[0]["train_ce"]


def test_node_classifier_on_cora():
    require("cora")
    from nsr import data as nsr_data

    graph = nsr_data.load("cora", split_seed=0)
    torch.manual_seed(0)
    cfg = TrainConfig(epochs=30, lr=0.01, optimizer="adam", weight_decay=5e-4, nsr_weight=0.1, nsr_layers=("layer1",), progress=False)
    result = train_node_classifier(models.gnn("sage", 2, graph.num_features, graph.num_classes), graph, cfg)
    assert result.test_acc > 0.6  # 7 classes
    assert all(h["nsr_penalty"] > 0 for h in result.history)


def test_config_validation():
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig(epochs=-1)
    with pytest.raises(ValueError, match="nsr_layers"):
        TrainConfig(nsr_weight=1.0)
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(optimizer="rmsprop")
    with pytest.raises(ValueError, match="unknown spec keys"):
        experiments.run_spec({"dataset": "digits", "model": "mlp", "depth": 3, "epoch": 1})


def test_grid_resumes_and_tables(tmp_path):
    store = ResultStore(tmp_path / "r.jsonl")
    base = {"dataset": "digits", "model": "mlp", "depth": 3, "epochs": 2, "lr": 0.05, "batch_size": 32, "threads": 1}
    specs = [
        {**base, "variant": v, "seed": s, **({"nsr_weight": 0.5, "nsr_layers": ["layer3"]} if v == "nsr" else {})}
        for v in ("vanilla", "nsr")
        for s in (0, 1)
    ]
    records = experiments.run_grid(specs[:3], store, workers=1, progress=False)
    assert len(records) == 3 and len(store.records()) == 3
    with open(store.path, "a") as handle:  # a line cut by a crash is ignored
        handle.write('{"key": "trunc')
    records = experiments.run_grid(specs, store, workers=1, progress=False)
    assert len(records) == 4
    assert [r["key"] for r in records] == [spec_key(s) for s in specs]
    assert len(store.keys()) == 4  # the first three were not run again
    store.append({**records[0], "wall_time": -1.0})  # a second process ran the same spec: one run per key
    assert len(store.records()) == 4 and store.records()[0]["wall_time"] == records[0]["wall_time"]
    table = summarize(records, ["variant"])
    assert set(table["n"]) == {2}
    paired = paired_comparison(records, ["depth"], "variant", "vanilla", "nsr")
    assert paired["pairs"].tolist() == [2]
    assert json.loads(store.path.read_text().splitlines()[0])["history"][0]["epoch"] == 1


def test_dataloader_path_with_cifar_augmentation_and_amp():
    from nsr.data import ImageSplits

    g = torch.Generator().manual_seed(0)
    x = torch.rand(40, 3, 32, 32, generator=g)
    y = torch.arange(40) % 4
    data = ImageSplits("tiny-cifar-format", x[:24], y[:24], x[24:32], y[24:32], x[32:], y[32:], 4)
    torch.manual_seed(0)
    cfg = TrainConfig(epochs=2, batch_size=8, augment="cifar-cutout", amp=True, nsr_weight=0.05, nsr_layers=("fc",), queue_length=1, progress=False)
    result = train_classifier(models.resnet18_cifar(num_classes=4, width=4), data, cfg)
    assert len(result.history) == 2 and result.history[-1]["nsr_penalty"] > 0
    assert 0 <= result.metrics()["test_top5_error"] <= result.metrics()["test_error"]


def test_imagefolder_path_on_the_imagenet_sample(imagenet_folder):
    from nsr import data as nsr_data

    folder = nsr_data.load("imagenet", path=imagenet_folder)
    torch.manual_seed(0)
    # one image per class: with M = 5 the centroid mixes earlier random crops of the same image
    cfg = TrainConfig(epochs=2, batch_size=5, nsr_weight=0.4, nsr_layers=("pool",), queue_length=5, progress=False)
    result = train_classifier(models.resnet18_cifar(num_classes=10, width=4), folder, cfg)
    assert result.history[1]["nsr_penalty"] > 0 and 0 <= result.test_top5 <= 1


def _all_training_nodes_with_two_hops(data, cfg, generator):
    """A stand-in for NeighborLoader with full fan-out: one batch, every training node a seed, 2 hops."""
    from torch_geometric.data import Data
    from torch_geometric.utils import k_hop_subgraph, subgraph

    seeds = data.train_mask.nonzero().flatten()
    hood, _, _, _ = k_hop_subgraph(seeds, 2, data.edge_index, num_nodes=data.num_nodes)
    order = torch.cat([seeds, hood[~torch.isin(hood, seeds)]])
    edge_index, _ = subgraph(order, data.edge_index, relabel_nodes=True, num_nodes=data.num_nodes)
    sub = Data(x=data.x[order], y=data.y[order], edge_index=edge_index, num_nodes=len(order))
    sub.batch_size = len(seeds)
    yield sub


def test_neighbour_sampled_training_equals_full_batch_on_the_whole_neighbourhood(monkeypatch):
    require("cora")
    import torch_geometric.typing as pyg_typing

    from nsr import data as nsr_data
    from nsr import train as nsr_train

    graph = nsr_data.load("cora", split_seed=0)
    cfg = dict(epochs=2, lr=0.01, optimizer="adam", nsr_weight=0.5, nsr_layers=("layer1",), progress=False)

    def run(**extra):
        torch.manual_seed(0)
        model = models.gnn("sage", 2, graph.num_features, graph.num_classes, dropout=0.0)
        history = train_node_classifier(model, graph, TrainConfig(**cfg, **extra)).history
        return model, history

    full_model, full = run()
    if not (pyg_typing.WITH_PYG_LIB or pyg_typing.WITH_TORCH_SPARSE):
        with pytest.raises(RuntimeError, match="pyg-lib or torch-sparse"):
            run(neighbor_sampling=(-1, -1))
    monkeypatch.setattr(nsr_train, "neighbor_batches", _all_training_nodes_with_two_hops)
    sampled_model, sampled = run(neighbor_sampling=(-1, -1), batch_size=10_000)
    for a, b in zip(full, sampled):
        assert a["train_ce"] == pytest.approx(b["train_ce"], rel=1e-5)
        assert a["nsr_penalty"] == pytest.approx(b["nsr_penalty"], rel=1e-4)
    for p, q in zip(full_model.parameters(), sampled_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="neighbor_sampling"):
        TrainConfig(neighbor_sampling=(10, 0))


def test_pooled_comparison_counts_pairs_across_groups():
    from nsr.results import pooled_comparison

    def rec(ds, variant, seed, err):
        return {"spec": {"dataset": ds, "variant": variant, "seed": seed}, "metrics": {"test_error": err}}

    records = [rec("a", "vanilla", s, 10.0) for s in range(3)] + [rec("a", "nsr", s, 9.0 + 0.1 * s) for s in range(3)]
    records += [rec("b", "vanilla", s, 2.0) for s in range(3)] + [rec("b", "nsr", s, e) for s, e in enumerate([2.2, 2.0, 1.9])]
    out = pooled_comparison(records, ["dataset"], "variant", "vanilla", "nsr")
    assert out["pairs"] == 6 and out["treatment better"] == 4 and out["treatment worse"] == 1  # one tie dropped
    assert out["mean relative gain %"] == pytest.approx(100 * (0.1 + 0.09 + 0.08 - 0.1 + 0 + 0.05) / 6)
    assert out["sign test p"] == pytest.approx(0.375)


def test_build_model_rejects_an_option_the_model_lacks():
    """A competitor's option must reach the model or fail: silently ignoring it repeats the vanilla run."""
    from types import SimpleNamespace

    from nsr.experiments import build_model

    data = SimpleNamespace(num_classes=10, input_shape=(1, 28, 28))
    assert any(isinstance(m, torch.nn.Dropout) for m in build_model({"model": "lenet", "dropout": 0.3}, data).modules())
    with pytest.raises(ValueError, match="'resnet18' has no option 'dropout'"):
        build_model({"model": "resnet18", "width": 8, "dropout": 0.3}, SimpleNamespace(num_classes=10, input_shape=(1, 28, 28)))
    with pytest.raises(ValueError, match="'lenet' has no option 'batch_norm'"):
        build_model({"model": "lenet", "batch_norm": True}, data)
