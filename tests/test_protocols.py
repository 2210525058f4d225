"""The protocols' grids and choices: layer by variance, lambda by validation accuracy (never the test set)."""

from __future__ import annotations

import pytest

from nsr import protocols
from nsr.results import ResultStore, spec_key


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


def test_combination_spec_trains_nsr_and_the_method_at_their_own_weights():
    sage = protocols.baseline_settings()["sage2-amazon-computers"]
    both = protocols.combination_spec(sage, "dropout", 0.1, 0.3, 10, 2)
    assert both["variant"] == "nsr+dropout" and both["dropout"] == 0.3
    assert both["nsr_layers"] == ["layer1"] and both["nsr_weight"] == 0.1 and both["seed"] == 2
    center = protocols.combination_spec(sage, "center-running", 0.1, 0.01, 10, 0)
    assert center["method"] == "center-running" and center["method_layer"] == "layer1" and center["method_weight"] == 0.01
    with pytest.raises(ValueError, match="cannot be combined"):
        protocols.combination_spec(sage, "nsr", 0.1, 0.1, 10, 0)
    assert protocols.paper_nsr_weight("mlp4-mnist") == 7.487 and protocols.paper_nsr_weight("lenet-fashion-mnist") is None


def test_gnn_chapter_adds_paper_depths_without_the_grid(monkeypatch):
    calls = []

    def fake_run_grid(specs, store, workers=1, progress=True, execute=True):
        calls.append(list(specs))
        return [_record(s, layer_variances={f"layer{i}": float(i) for i in range(1, s["depth"] + 1)},
                        best_val_acc=0.5) for s in specs]

    monkeypatch.setattr("nsr.experiments.run_grid", fake_run_grid)
    monkeypatch.setattr("nsr.data.load", lambda name, **kw: None)
    out = protocols.run_gnn_chapter(None, ["amazon-photo", "cora"], ["gcn"], [2], [0, 1], lambda_grid=[0.1, 1.0],
                                    paper_depths=[3, 4])
    deeper = [s for group in calls for s in group if s["depth"] > 2]
    assert {(s["dataset"], s["depth"], s["variant"]) for s in deeper} == {
        ("amazon-photo", d, v) for d in (3, 4) for v in ("vanilla", "nsr-paper")}  # Cora: no paper lambda
    assert {s["nsr_weight"] for s in deeper if s["variant"] == "nsr-paper"} == {0.0855, 0.0024}
    assert all(r["spec"]["depth"] == 2 for r in out["grid"] + out["nsr-val"])
    assert len(out["vanilla"]) == 2 * 2 + 2 * 2  # depth 2 on both graphs, depths 3 and 4 on Amazon-Photo


def test_baselines_epochs_per_setting(monkeypatch):
    with pytest.raises(ValueError, match="epochs has no entry"):
        protocols._per_setting({"mlp4-mnist": 5}, "lenet-fashion-mnist", 15, "epochs")
    with pytest.raises(ValueError, match="search_epochs must be positive"):
        protocols._per_setting(0, "mlp4-mnist", 100, "search_epochs")
    assert protocols._per_setting(None, "lenet-fashion-mnist", 15, "epochs") == 15
    with pytest.raises(ValueError, match="unknown methods"):
        protocols.run_baselines_chapter(None, "x.db", methods=["nsr", "mixup"])
    with pytest.raises(ValueError, match="combine: unknown methods"):
        protocols.run_baselines_chapter(None, "x.db", combine=["mixup"])
    with pytest.raises(ValueError, match=r"combine needs the searches of \['nsr'\]"):
        protocols.run_baselines_chapter(None, "x.db", methods=["l2"], combine=["l2"])


def test_baselines_chapter_searches_in_parallel_then_trains_the_choice(mnist, tmp_path):
    store = ResultStore(tmp_path / "baselines.jsonl")
    database = str(tmp_path / "search.db")
    kwargs = dict(settings=["mlp4-mnist"], methods=["nsr", "l1"], n_trials=2, search_epochs=1,
                  epochs={"mlp4-mnist": 1}, seeds=[0], train_subset=200, progress=False, combine=["l1"])
    out = protocols.run_baselines_chapter(store, database, workers=2, **kwargs)
    assert {m: len(s.trials) for (_, m), s in out["studies"].items()} == {"nsr": 2, "l1": 2}
    finals = {r["spec"]["variant"]: r for r in out["final"]}
    assert set(finals) == {"vanilla", "nsr", "l1", "nsr+l1"} and all(r["spec"]["epochs"] == 1 for r in finals.values())
    best = {m: max(out["studies"][("mlp4-mnist", m)].trials, key=lambda t: t.value).params["weight"] for m in ("nsr", "l1")}
    assert finals["nsr"]["spec"]["nsr_weight"] == best["nsr"]
    both = finals["nsr+l1"]
    assert both["spec"]["nsr_weight"] == best["nsr"] and both["spec"]["method_weight"] == best["l1"]
    assert both["history"][-1]["nsr_penalty"] > 0 and finals["l1"]["history"][-1]["nsr_penalty"] == 0  # NSR really ran
    assert len(store.records()) == 2 * 2 + 4  # every trial and every final run is a results line
    again = protocols.run_baselines_chapter(store, database, workers=1, execute=False, **kwargs)
    assert [r["key"] for r in again["final"]] == [r["key"] for r in out["final"]]
