"""lambda search with Optuna (the paper used Microsoft NNI): the same TPE search for every method.

``search_weight`` samples the weight log-uniformly in ``[low, high]`` with a seeded TPE sampler, trains the run
``spec`` describes (usually a shorter schedule than the final one) with that weight, and maximises the
**validation** accuracy at the best-validation epoch — the test split is never looked at. A short TPE search
leaves whole decades of the range untried (and every study with the same seed starts from the same random
points), so ``coverage`` then runs each point of a log grid (one per ``coverage`` decades, both bounds
included) that lies farther than half a grid step from every tried weight (:func:`coverage_grid`). Trials live in an
Optuna RDB storage (SQLite by default), so an interrupted search resumes where it stopped, and several
machines can share one search through one database. Every trial's run is also a line in the results file.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .experiments import run_spec
from .results import ResultStore, spec_key

__all__ = ["GRACE_PERIOD", "coverage_grid", "HEARTBEAT_INTERVAL", "MAX_RETRY", "load_study", "rdb_storage", "search_weight", "study_name", "study_summary", "weight_key"]


def weight_key(spec: Mapping[str, Any]) -> str:
    """The spec field the searched weight goes into: ``method_weight`` for a baseline, ``nsr_weight`` for NSR."""
    return "method_weight" if spec.get("method") else "nsr_weight"


def study_name(spec: Mapping[str, Any], low: float, high: float, field: str | None = None) -> str:
    """The study of ``spec``'s search: derived from the spec without the searched field, and the range."""
    field = field or weight_key(spec)
    return f"{spec_key({**spec, field: None})}-{low:g}-{high:g}"


#: seconds between a running trial's heartbeats, and the silence after which another process declares it dead
HEARTBEAT_INTERVAL = 60
GRACE_PERIOD = 180
#: how often a trial whose process died is run again with the same weight
MAX_RETRY = 3


def rdb_storage(storage: str | Path) -> Any:
    """Optuna RDB storage for a URL or a SQLite file path; SQLite waits up to 2 min for a lock, so several
    processes can write to one database file.

    Running trials record a heartbeat; the next ``optimize`` on the study (in any process) fails a trial whose
    heartbeat stopped more than ``GRACE_PERIOD`` seconds ago and re-enqueues its weight, so a search killed
    mid-trial resumes with the trial it lost instead of leaving it RUNNING forever.
    """
    import optuna

    url = str(storage) if "://" in str(storage) else f"sqlite:///{Path(storage).resolve()}"
    kwargs = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {}
    with warnings.catch_warnings():  # the heartbeat and its retry callback are marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)
        return optuna.storages.RDBStorage(url, engine_kwargs=kwargs, heartbeat_interval=HEARTBEAT_INTERVAL,
                                          grace_period=GRACE_PERIOD, heartbeat_stale_trial_callback=retry)


def load_study(spec: Mapping[str, Any], storage: str | Path, low: float, high: float, field: str | None = None) -> Any:
    """The stored study of ``spec``'s search, or None when it has not started."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return optuna.load_study(study_name=study_name(spec, low, high, field), storage=rdb_storage(storage))
    except KeyError:
        return None


def coverage_grid(low: float, high: float, tried: list[float], spacing: float = 1.0) -> list[float]:
    """The points of a log grid over ``[low, high]`` (``spacing`` decades apart, rounded so both bounds are on it)
    that lie farther than half a step from every weight in ``tried``: the parts of the range a search skipped."""
    if not 0 < low < high:
        raise ValueError(f"need 0 < low < high, got {low}, {high}")
    if spacing <= 0:
        raise ValueError(f"spacing must be positive (decades), got {spacing!r}")
    decades = math.log10(high / low)
    steps = max(1, round(decades / spacing))
    step = decades / steps
    grid = [low, *(10 ** (math.log10(low) + k * step) for k in range(1, steps)), high]
    return [g for g in grid if all(abs(math.log10(g / t)) >= step / 2 for t in tried)]


def search_weight(
    spec: Mapping[str, Any],
    n_trials: int,
    storage: str | Path,
    store: ResultStore | None = None,
    low: float = 1e-4,
    high: float = 10.0,
    seed: int = 0,
    field: str | None = None,
    coverage: float | None = None,
):  # type: ignore[no-untyped-def]
    """Run (or resume) the TPE search of ``spec``'s weight (spec field ``field``, by default
    :func:`weight_key`); return the Optuna study.

    The study's name is derived from the spec, so the same spec always resumes the same study; only the
    trials still missing up to ``n_trials`` (completed ones) are run. Then, with ``coverage`` (decades), each
    :func:`coverage_grid` point the trials left out is run as one more trial (user attribute ``grid``); the
    grid depends only on the TPE trials, so a resumed or fresh search ends with the same trials.
    """
    import optuna

    if n_trials < 1:
        raise ValueError(f"n_trials must be >= 1, got {n_trials}")
    if not 0 < low < high:
        raise ValueError(f"need 0 < low < high, got {low}, {high}")
    if coverage is not None and coverage <= 0:
        raise ValueError(f"coverage must be positive (decades) or None, got {coverage!r}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    field = field or weight_key(spec)
    # TPE's default 10 random start-up trials would make a short search purely random: half of the budget
    # explores, the other half follows the TPE model
    sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(1, n_trials // 2))
    study = optuna.create_study(study_name=study_name(spec, low, high, field), storage=rdb_storage(storage),
                                direction="maximize", load_if_exists=True, sampler=sampler)

    def objective(trial: Any) -> float:
        trial_spec = copy.deepcopy(dict(spec))
        trial_spec[field] = trial.suggest_float("weight", low, high, log=True)
        trial_spec["experiment"] = f"search-{trial_spec.get('experiment', '')}"
        record = run_spec(trial_spec)
        if store is not None:
            store.append(record)
        trial.set_user_attr("test_error", record["metrics"]["test_error"])  # reported, never optimised
        trial.set_user_attr("grid", grid_phase)
        return float(record["metrics"]["best_val_acc"])

    def complete() -> list[Any]:
        return [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]

    grid_phase = False
    done = sum(not t.user_attrs.get("grid") for t in complete())  # grid trials do not count towards n_trials
    if done < n_trials:
        study.optimize(objective, n_trials=n_trials - done)
    if coverage is not None:
        grid_phase = True
        for point in coverage_grid(low, high, [t.params["weight"] for t in complete()], coverage):
            # skip_if_exists: a point enqueued by a process that died before running it is not queued twice
            study.enqueue_trial({"weight": point}, skip_if_exists=True)
            study.optimize(objective, n_trials=1)
    return study


def study_summary(study: Any) -> dict[str, Any]:
    """The chosen weight of a finished search and where it lies among the tried ones.

    ``at_edge`` is "low" or "high" when the best trial is the smallest or largest weight tried (the optimum may
    lie outside the range: widen it, which starts a new study), else "".
    """
    complete = [t for t in study.trials if t.value is not None]
    if not complete:
        raise ValueError(f"study {study.study_name!r} has no completed trial")
    best = max(complete, key=lambda t: t.value)
    weights = sorted(t.params["weight"] for t in complete)
    chosen = best.params["weight"]
    edge = "low" if chosen == weights[0] else "high" if chosen == weights[-1] else ""
    grid = sum(bool(t.user_attrs.get("grid")) for t in complete)
    return {"trials": len(complete), "grid trials": grid, "chosen": chosen, "best validation": best.value,
            "lowest tried": weights[0], "highest tried": weights[-1], "at_edge": edge}
