"""The RQ2 baselines and the Optuna lambda search."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from nsr import baselines, models
from nsr.results import ResultStore
from nsr.search import search_weight, study_summary


def _mlp_with_batch():
    torch.manual_seed(0)
    model = models.mlp(3, in_features=8, num_classes=3)
    x, y = torch.randn(16, 8), torch.arange(16) % 3
    return model, x, y


def test_l1_and_decov_values():
    model, x, y = _mlp_with_batch()
    l1 = baselines.L1Activation(0.3, "layer2").attach(model)
    decov = baselines.DeCov(0.7, "layer2").attach(model)
    out = model(x)
    h = model.layer2(model.flatten(x))
    assert float(l1(x, out, y)) == pytest.approx(0.3 * float(h.abs().mean()), rel=1e-6)
    cov = np.cov(h.detach().numpy().T, bias=True)
    want = 0.5 * 0.7 * ((cov**2).sum() - (np.diag(cov) ** 2).sum())
    assert float(decov(x, out, y)) == pytest.approx(want, rel=1e-4)
    l1.detach()
    decov.detach()


def test_weight_l2_matches_sum_of_squares():
    model, x, y = _mlp_with_batch()
    l2 = baselines.WeightL2(0.1).attach(model)
    want = 0.05 * sum(float(m.weight.square().sum()) for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert float(l2(x, model(x), y)) == pytest.approx(want, rel=1e-6)


def test_jacobian_estimator_is_unbiased_on_a_linear_map():
    torch.manual_seed(0)
    W = torch.randn(4, 6)
    x = torch.randn(200, 6, requires_grad=True)
    out = x @ W.T
    jac = baselines.JacobianNorm(2.0, projections=200)
    # E[C ||J^T v||^2] = ||J||_F^2 = ||W||_F^2 for every sample
    assert float(jac(x, out, None)) == pytest.approx(0.5 * 2.0 * float(W.square().sum()), rel=0.05)


def test_center_loss_forms():
    model, x, y = _mlp_with_batch()
    running = baselines.build_method("center-running", 1.0, "layer2", 3, num_features=100).attach(model)
    running.train()
    for _ in range(60):
        running(x, model(x), y)
    h = model.layer2(model.flatten(x)).detach()
    means = torch.stack([h[y == j].mean(0) for j in range(3)])
    assert torch.allclose(running.centers, means, atol=1e-3)  # the delta rule converges to the class means
    learned = baselines.build_method("center", 1.0, "layer2", 3, num_features=100).attach(model)
    assert [n for n, _ in learned.named_parameters()] == ["centers"]
    loss = learned(x, model(x), y)
    loss.backward()
    assert learned.centers.grad is not None and float(learned.centers.grad.abs().sum()) > 0


def test_build_method_errors():
    with pytest.raises(ValueError, match="unknown method"):
        baselines.build_method("orthogonal", 1.0, None, 3)
    with pytest.raises(ValueError, match="weight"):
        baselines.L1Activation(-1.0, "layer2")


def test_search_resumes_from_sqlite(tmp_path):
    spec = {"dataset": "digits", "model": "mlp", "depth": 3, "epochs": 1, "lr": 0.1, "batch_size": 64, "seed": 0,
            "method": "l1", "method_layer": "layer2"}
    store = ResultStore(tmp_path / "runs.jsonl")
    study = search_weight(spec, 2, tmp_path / "search.db", store)
    assert len(study.trials) == 2 and len(store.records()) == 2
    weights = [t.params["weight"] for t in study.trials]
    assert all(1e-4 <= w <= 10 for w in weights)
    again = search_weight(spec, 3, tmp_path / "search.db", store)  # resumes: one more trial
    assert len(again.trials) == 3 and [t.params["weight"] for t in again.trials[:2]] == weights
    assert all("test_error" in t.user_attrs for t in again.trials)
    summary = study_summary(again)
    best = max(again.trials, key=lambda t: t.value)
    assert summary["trials"] == 3 and summary["chosen"] == best.params["weight"]
    assert summary["lowest tried"] == min(weights + [again.trials[2].params["weight"]])
    expected = {summary["lowest tried"]: "low", summary["highest tried"]: "high"}.get(summary["chosen"], "")
    assert summary["at_edge"] == expected


def test_search_retries_the_trial_of_a_killed_process(tmp_path, monkeypatch):
    import time

    import optuna

    from nsr import search

    monkeypatch.setattr(search, "HEARTBEAT_INTERVAL", 1)
    monkeypatch.setattr(search, "GRACE_PERIOD", 1)
    spec = {"dataset": "digits", "model": "mlp", "depth": 3, "epochs": 1, "lr": 0.1, "batch_size": 64, "seed": 0,
            "method": "l1", "method_layer": "layer2"}
    database = tmp_path / "search.db"
    # a process that started a trial at weight 0.0123, beat once, and died
    storage = search.rdb_storage(database)
    dead = optuna.create_study(study_name=search.study_name(spec, 1e-4, 10.0), storage=storage, direction="maximize")
    dead.enqueue_trial({"weight": 0.0123})
    with pytest.warns(UserWarning, match="Heartbeat"):  # ask() does not beat by itself; the beat is recorded below
        trial = dead.ask({"weight": optuna.distributions.FloatDistribution(1e-4, 10.0, log=True)})
    storage.record_heartbeat(trial._trial_id)
    time.sleep(2.5)
    study = search_weight(spec, 1, database, ResultStore(tmp_path / "runs.jsonl"))
    states = [t.state for t in study.trials]
    assert states == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE]
    assert study.trials[1].params["weight"] == 0.0123  # the lost trial is run again, not replaced by a new sample


def test_study_summary_flags_a_choice_at_the_edge_of_the_tried_weights(tmp_path):
    import optuna

    study = optuna.create_study(direction="maximize")
    for weight, value in ((1e-4, 0.9), (0.1, 0.8), (5.0, 0.7)):
        study.add_trial(optuna.trial.create_trial(params={"weight": weight}, value=value,
                                                  distributions={"weight": optuna.distributions.FloatDistribution(1e-4, 10, log=True)}))
    assert study_summary(study)["at_edge"] == "low"
    study.add_trial(optuna.trial.create_trial(params={"weight": 1e-3}, value=0.95,
                                              distributions={"weight": optuna.distributions.FloatDistribution(1e-4, 10, log=True)}))
    assert study_summary(study)["at_edge"] == "" and study_summary(study)["chosen"] == 1e-3
    with pytest.raises(ValueError, match="no completed trial"):
        study_summary(optuna.create_study(study_name="empty"))


def test_method_overhead_table_times_every_method_interleaved():
    from nsr import overhead

    table = overhead.method_overhead_table(["nsr", "jacobian", "dropout"], rounds=2, steps=2)
    assert list(table["method"]) == ["vanilla", overhead.CONTROL, "nsr", "jacobian", "dropout"]
    assert (table["step (ms)"] > 0).all() and table["ratio to vanilla"].iloc[0] == 1.0
    with pytest.raises(ValueError, match="unknown methods"):
        overhead.method_overhead_table(["mixup"])
    with pytest.raises(ValueError, match="rounds and steps"):
        overhead.measure_many({"a": lambda: lambda: None}, 0, 1)


def test_measure_many_builds_each_variant_every_round_and_pairs_rounds():
    from nsr import overhead

    built: list[str] = []

    def builder(name: str, seconds: float):  # type: ignore[no-untyped-def]
        def make():  # type: ignore[no-untyped-def]
            built.append(name)
            return lambda: time.sleep(seconds)

        return make

    times = overhead.measure_many({"vanilla": builder("vanilla", 0.001), "slow": builder("slow", 0.003)}, rounds=3, steps=2, warmup=0)
    assert sorted(built) == ["slow"] * 3 + ["vanilla"] * 3
    assert [len(t) for t in times.values()] == [3, 3]
    median, q1, q3 = overhead.ratio_summary(times, "slow")
    assert q1 <= median <= q3 and median > 1.5
    assert overhead.ratio_summary(times, "vanilla") == (1.0, 1.0, 1.0)


def test_coverage_grid_fills_the_decades_a_search_skipped():
    from nsr.search import coverage_grid

    assert coverage_grid(1e-4, 10.0, []) == pytest.approx([1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0])
    # half a decade from a tried weight counts as covered; the bounds are grid points like any other
    assert coverage_grid(1e-4, 10.0, [1.3e-4, 3.9e-3, 0.053, 0.38, 7.5]) == pytest.approx([1e-3])
    assert coverage_grid(0.02, 0.7, [], spacing=1.0) == pytest.approx([0.02, 0.1183216, 0.7])
    assert coverage_grid(1e-4, 10.0, [], spacing=2.5) == pytest.approx([1e-4, 10 ** -1.5, 10.0])
    with pytest.raises(ValueError, match="spacing"):
        coverage_grid(1e-4, 10.0, [], spacing=0)
    with pytest.raises(ValueError, match="low < high"):
        coverage_grid(1.0, 1.0, [])


def test_search_with_coverage_runs_the_untried_grid_points_once(tmp_path):
    from nsr.search import coverage_grid

    spec = {"dataset": "digits", "model": "mlp", "depth": 3, "epochs": 1, "lr": 0.1, "batch_size": 64, "seed": 0,
            "method": "l1", "method_layer": "layer2"}
    store = ResultStore(tmp_path / "runs.jsonl")
    plain = search_weight(spec, 2, tmp_path / "plain.db", store)
    tpe = [t.params["weight"] for t in plain.trials]
    missing = coverage_grid(1e-4, 10.0, tpe, 2.5)
    assert missing  # two random weights cannot cover three grid points 2.5 decades apart
    study = search_weight(spec, 2, tmp_path / "covered.db", store, coverage=2.5)
    weights = [t.params["weight"] for t in study.trials]
    assert weights[:2] == tpe  # the TPE trials are those of the search without coverage
    assert weights[2:] == pytest.approx(missing)
    assert [t.user_attrs["grid"] for t in study.trials] == [False, False] + [True] * len(missing)
    assert coverage_grid(1e-4, 10.0, weights, 2.5) == []
    assert study_summary(study)["grid trials"] == len(missing)
    again = search_weight(spec, 2, tmp_path / "covered.db", store, coverage=2.5)  # resumes: nothing left to run
    assert len(again.trials) == len(study.trials)
    more = search_weight(spec, 3, tmp_path / "covered.db", store, coverage=2.5)  # one more TPE trial, grid re-checked
    assert sum(not t.user_attrs["grid"] for t in more.trials) == 3
    assert coverage_grid(1e-4, 10.0, [t.params["weight"] for t in more.trials], 2.5) == []
    with pytest.raises(ValueError, match="coverage"):
        search_weight(spec, 2, tmp_path / "covered.db", store, coverage=-1.0)
