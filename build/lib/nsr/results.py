"""Results files and the tables built from them.

Every finished run is one JSON line in ``results/<config>/<experiment>.jsonl``: its ``spec`` (everything that
defines the run, seed included), a ``key`` (hash of the spec), ``metrics``, the per-epoch ``history`` and
the software versions. Appends take a file lock, so parallel workers never interleave lines; a run that is
killed before it finishes leaves nothing, and running the grid again skips every key already present.
Tables and figures in the book are computed from these files by the functions below.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import platform
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["spec_key", "ResultStore", "summarize", "paired_comparison", "pooled_comparison", "mean_std", "versions"]


def spec_key(spec: Mapping[str, Any]) -> str:
    """Stable hash of a run's spec (key order does not matter)."""
    return hashlib.sha1(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]


def versions() -> dict[str, str]:
    import torch

    out = {"python": platform.python_version(), "torch": torch.__version__}
    try:
        import torch_geometric

        out["torch_geometric"] = torch_geometric.__version__
    except ImportError:  # pragma: no cover
        pass
    return out


class ResultStore:
    """Append-only JSON-lines file of finished runs."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def records(self) -> list[dict[str, Any]]:
        """Every finished run, once per key (the first line wins: two processes that both ran a missing spec
        append the same deterministic run twice), in file order."""
        if not self.path.exists():
            return []
        out: dict[str, dict[str, Any]] = {}
        with open(self.path) as handle:
            for line in handle:
                line = line.strip()
                if line:
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError:  # a line cut by a crash mid-write: ignore it
                        continue
                    out.setdefault(record["key"], record)
        return list(out.values())

    def keys(self) -> set[str]:
        return {r["key"] for r in self.records()}

    def append(self, record: Mapping[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps(record, default=float) + "\n"
        with open(self.path, "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                size = handle.seek(0, os.SEEK_END)
                if size:  # after a crash mid-write, start on a fresh line
                    handle.seek(size - 1)
                    if handle.read(1) != b"\n":
                        line = "\n" + line
                handle.write(line.encode())
                handle.flush()
                os.fsync(handle.fileno())
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def select(self, **where: Any) -> list[dict[str, Any]]:
        """Records whose spec has every ``key=value`` of ``where``."""
        return [r for r in self.records() if all(r["spec"].get(k) == v for k, v in where.items())]


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    n = len(values)
    if n == 0:
        return float("nan"), float("nan")
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std


def _group(records: Iterable[Mapping[str, Any]], by: Sequence[str]) -> dict[tuple[Any, ...], list[Mapping[str, Any]]]:
    groups: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
    for r in records:
        groups.setdefault(tuple(_hashable(r["spec"].get(k)) for k in by), []).append(r)
    return groups


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def summarize(records: Iterable[Mapping[str, Any]], by: Sequence[str], metric: str = "test_error"):  # type: ignore[no-untyped-def]
    """DataFrame of mean, std and number of seeds of ``metric`` per group of spec values ``by``."""
    import pandas as pd

    rows = []
    for key, group in _group(records, by).items():
        values = [float(r["metrics"][metric]) for r in group]
        mean, std = mean_std(values)
        rows.append({**dict(zip(by, key)), "mean": mean, "std": std, "n": len(values)})
    return pd.DataFrame(rows, columns=[*by, "mean", "std", "n"])


def _paired_values(
    records: Iterable[Mapping[str, Any]], by: Sequence[str], variant: str, baseline: Any, treatment: Any, metric: str,
    pair_on: str,
) -> Iterator[tuple[tuple[Any, ...], list[Any], list[float], list[float]]]:
    """Per group of ``by`` with at least one pair: (group key, paired ``pair_on`` values, baseline and treatment
    ``metric`` values in that order)."""
    for key, group in _group(records, by).items():
        base = {r["spec"][pair_on]: float(r["metrics"][metric]) for r in group if _hashable(r["spec"].get(variant)) == baseline}
        treat = {r["spec"][pair_on]: float(r["metrics"][metric]) for r in group if _hashable(r["spec"].get(variant)) == treatment}
        pairs = sorted(set(base) & set(treat))
        if pairs:
            yield key, pairs, [base[p] for p in pairs], [treat[p] for p in pairs]


def paired_comparison(
    records: Iterable[Mapping[str, Any]],
    by: Sequence[str],
    variant: str,
    baseline: Any,
    treatment: Any,
    metric: str = "test_error",
    pair_on: str = "seed",
):  # type: ignore[no-untyped-def]
    """Baseline vs treatment per group, paired over ``pair_on`` (same seed = same init and batch order).

    Columns: baseline and treatment mean ± std, the relative gain ``(baseline - treatment) / baseline`` (as in
    the paper's tables), the mean paired difference, the paired t-test p-value (two-sided; NaN with fewer
    than two pairs) and the number of pairs.
    """
    import pandas as pd
    from scipy import stats

    rows = []
    for key, pairs, b, t in _paired_values(records, by, variant, baseline, treatment, metric, pair_on):
        bm, bs = mean_std(b)
        tm, ts = mean_std(t)
        diffs = [x - y for x, y in zip(b, t)]
        p_value = float("nan")
        if len(pairs) > 1 and any(d != diffs[0] for d in diffs):
            p_value = float(stats.ttest_rel(b, t).pvalue)
        elif len(pairs) > 1:
            p_value = 0.0 if diffs[0] != 0 else 1.0
        rows.append(
            {
                **dict(zip(by, key)),
                "baseline": bm,
                "baseline_std": bs,
                "treatment": tm,
                "treatment_std": ts,
                "gain_%": 100.0 * (bm - tm) / bm if bm else float("nan"),
                "mean_diff": mean_std(diffs)[0],
                "p_value": p_value,
                "pairs": len(pairs),
            }
        )
    columns = [*by, "baseline", "baseline_std", "treatment", "treatment_std", "gain_%", "mean_diff", "p_value", "pairs"]
    return pd.DataFrame(rows, columns=columns)


def pooled_comparison(
    records: Iterable[Mapping[str, Any]],
    by: Sequence[str],
    variant: str,
    baseline: Any,
    treatment: Any,
    metric: str = "test_error",
    pair_on: str = "seed",
) -> dict[str, float]:
    """Baseline vs treatment over every (group, seed) pair at once, for settings too small to test one by one.

    Each pair contributes its relative difference ``(baseline - treatment) / baseline`` (groups differ in
    scale). Returns the number of pairs, how many favour the treatment (lower ``metric``), the mean relative
    difference in %, the two-sided Wilcoxon signed-rank p-value and the two-sided sign-test p-value (ties
    dropped)."""
    from scipy import stats

    rel = [(x - y) / x for _, _, b, t in _paired_values(records, by, variant, baseline, treatment, metric, pair_on)
           for x, y in zip(b, t) if x]
    nonzero = [d for d in rel if d != 0]
    wins = sum(d > 0 for d in nonzero)
    return {
        "pairs": len(rel),
        "treatment better": wins,
        "treatment worse": len(nonzero) - wins,
        "mean relative gain %": 100.0 * sum(rel) / len(rel) if rel else float("nan"),
        "wilcoxon p": float(stats.wilcoxon(nonzero).pvalue) if len(nonzero) > 1 else float("nan"),
        "sign test p": float(stats.binomtest(wins, len(nonzero)).pvalue) if nonzero else float("nan"),
    }
