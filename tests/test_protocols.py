"""The protocols' grids and choices: layer by variance, lambda by validation accuracy (never the test set)."""

from __future__ import annotations

from nsr import protocols
from nsr.results import spec_key


def _record(spec, **metrics):
    return {"key": spec_key(spec), "spec": spec, "metrics": metrics}


def test_mlp_grids():
    base = protocols.mlp_protocol()
    vanilla = protocols.mlp_main_specs([3, 4], [0, 1], base)
    assert len(vanilla) == 4 and all(s["measure_layers"] == [f"layer{k}" for k in range(2, s["depth"] + 1)] for s in vanilla)
    assert base["lr"] == 0.01 and base["batch_size"] == 100 and base["epochs"] == 100 and base["queue_length"] == 5
    records = [
        _record(vanilla[0], layer_variances={"layer2": 5.0, "layer3": 9.0}),
        _record(vanilla[1], layer_variances={"layer2": 50.0, "layer3": 9.0}),  # seed 1: ignored
        _record(vanilla[2], layer_variances={"layer2": 1.0, "layer3": 2.0, "layer4": 3.0}),
    ]
    layers = protocols.chosen_layers(records)
    assert layers == {3: "layer3", 4: "layer4"}
    nsr = protocols.mlp_nsr_specs(layers, [0, 1], base)
    assert {(s["depth"], s["nsr_weight"]) for s in nsr} == {(3, 0.025), (4, 7.487)}
    assert len(protocols.mlp_rq3_specs([0], base)) == 4 and len(protocols.mlp_queue_specs([1, 2], [0, 1], base)) == 4


def test_lambda_is_chosen_on_validation_not_test():
    base = protocols.gnn_protocol()
    layers = {("cora", "sage", 2): "layer1"}
    grid = protocols.gnn_lambda_grid_specs(layers, [0.01, 0.1, 1.0], 0, base)
    records = [
        _record(grid[0], best_val_acc=0.80, test_error=5.0),  # best test, worse validation
        _record(grid[1], best_val_acc=0.85, test_error=20.0),
        _record(grid[2], best_val_acc=0.85, test_error=30.0),  # tie on validation: the smaller lambda wins
    ]
    assert protocols.choose_lambda(records) == {("cora", "sage", 2): 0.1}


def test_paper_lambda_only_where_the_paper_has_one():
    base = protocols.gnn_protocol()
    layers = {("cora", "sage", 2): "layer1", ("amazon-computers", "gcn", 2): "layer1"}
    specs = protocols.gnn_nsr_specs(layers, [0], base)
    assert [(s["dataset"], s["nsr_weight"]) for s in specs] == [("amazon-computers", 0.0025)]
    assert protocols.paper_gnn_lambda("amazon-photo", "sage", 3) == 0.3485


def test_baseline_specs_share_the_layer_and_search_one_field():
    settings = protocols.baseline_settings()
    mlp = settings["mlp4-mnist"]
    nsr = protocols.baseline_spec(mlp, "nsr", 0.5, 10, 0)
    l1 = protocols.baseline_spec(mlp, "l1", 0.5, 10, 0)
    assert nsr["nsr_layers"] == ["layer4"] and nsr["nsr_weight"] == 0.5
    assert l1["method"] == "l1" and l1["method_layer"] == "layer4" and l1["method_weight"] == 0.5
    ls = protocols.baseline_spec(mlp, "label-smoothing", 0.1, 10, 0)
    assert ls["label_smoothing"] == 0.1 and "method" not in ls
    sage_vanilla = protocols.baseline_spec(settings["sage2-amazon-computers"], "vanilla", None, 10, 0)
    assert sage_vanilla["dropout"] == 0.0  # dropout is a competitor, not part of vanilla
    assert len(protocols.cnn_gpu_specs(["resnet18"], [0, 1])) == 4
