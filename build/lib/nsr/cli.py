"""The ``nsr`` command: a demo run, executing the book's notebooks at a scale, building the book.

    nsr demo [--epochs 1]                      MLP-4 vanilla vs NSR on MNIST, both test accuracies
    nsr run --config quick|cpu|gpu [--only NAME ...] [--set KEY=VALUE ...]
                                               execute notebooks with papermill into book/
    nsr check                                  every config key is a real notebook parameter
    nsr book                                   build the HTML book with Jupyter Book 1 (offline)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SCALES = ("quick", "cpu", "gpu")


def demo(epochs: int) -> dict[str, float]:
    """Train MLP-4 on MNIST with and without NSR (same seed) and print both test accuracies."""
    import torch

    from . import data, models, protocols
    from .train import TrainConfig, train_classifier

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    mnist = data.load("mnist")
    out = {}
    for name, weight in (("vanilla", 0.0), ("NSR", protocols.MLP_LAMBDA[4])):
        torch.manual_seed(0)
        cfg = TrainConfig(epochs=epochs, nsr_weight=weight, nsr_layers=("layer4",), track_layer="layer4", progress=False)
        result = train_classifier(models.mlp(4), mnist, cfg)
        out[name] = result.test_acc
        last = result.history[-1]
        print(
            f"MLP-4 {name:8s} lambda={weight:<6g} test accuracy {result.test_acc:.4f} "
            f"(best-val epoch {result.best_epoch}; logits' intra-class variance {last['variance']:.3f}; "
            f"{last['time']:.1f} s/epoch)",
            flush=True,
        )
    return out


def load_config(scale: str, root: Path = ROOT) -> dict[str, dict[str, Any]]:
    import yaml

    path = root / "configs" / f"{scale}.yaml"
    if not path.exists():
        raise SystemExit(f"no config {path}; choose one of {SCALES}")
    with open(path) as handle:
        config = yaml.safe_load(handle) or {}
    if not isinstance(config, dict):
        raise SystemExit(f"{path} must map notebook names to parameter dicts")
    return {name: dict(params or {}) for name, params in config.items()}


def check_configs(root: Path = ROOT) -> list[str]:
    """Problems with the configs: unknown notebooks or keys that are not parameters of their notebook."""
    import papermill

    problems = []
    for scale in SCALES:
        for name, params in load_config(scale, root).items():
            notebook = root / "notebooks" / f"{name}.ipynb"
            if not notebook.exists():
                problems.append(f"configs/{scale}.yaml: no notebook notebooks/{name}.ipynb")
                continue
            known = set(papermill.inspect_notebook(str(notebook)))
            for key in params:
                if key not in known:
                    problems.append(f"configs/{scale}.yaml: {name}: {key!r} is not a parameter of the notebook (parameters: {sorted(known)})")
    return problems


def run(scale: str, only: list[str] | None, output: Path, root: Path = ROOT, overrides: dict[str, Any] | None = None) -> None:
    """Execute the config's notebooks with papermill into ``output`` (the book's executed copies).

    ``overrides`` (``--set key=value``, values parsed as YAML) change parameters of every notebook run.
    """
    import papermill

    config = load_config(scale, root)
    names = list(config) if not only else only
    unknown = [n for n in names if n not in config]
    if unknown:
        raise SystemExit(f"--only {unknown}: not in configs/{scale}.yaml (notebooks: {list(config)})")
    problems = [p for p in check_configs(root) if f"configs/{scale}.yaml" in p]
    if problems:
        raise SystemExit("\n".join(problems))
    output.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names, 1):
        params = {**config[name], **(overrides or {}), "scale": scale}
        start = time.time()
        print(f"[{i}/{len(names)}] {name} ({scale}) ...", flush=True)
        papermill.execute_notebook(
            str(root / "notebooks" / f"{name}.ipynb"),
            str(output / f"{name}.ipynb"),
            parameters=params,
            cwd=str(root / "notebooks"),
            progress_bar=False,
            kernel_name="python3",
        )
        print(f"[{i}/{len(names)}] {name} done in {time.time() - start:.0f} s -> {output / name}.ipynb", flush=True)


def book(root: Path = ROOT) -> None:
    """Build the HTML book offline with warnings as errors."""
    from .book import prepare_static

    prepare_static(root)
    cmd = [str(Path(sys.executable).with_name("jupyter-book")), "build", str(root), "-W", "--keep-going"]
    raise SystemExit(subprocess.call(cmd, cwd=root))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="nsr", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_demo = sub.add_parser("demo", help="MLP-4 vanilla vs NSR on MNIST")
    p_demo.add_argument("--epochs", type=int, default=1)
    p_run = sub.add_parser("run", help="execute notebooks with papermill")
    p_run.add_argument("--config", choices=SCALES, default="quick")
    p_run.add_argument("--only", nargs="*")
    p_run.add_argument("--output", type=Path, default=ROOT / "book")
    p_run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a parameter, e.g. --set execute_runs=false to tabulate a protocol still running")
    sub.add_parser("check", help="check the configs against the notebooks' parameters")
    sub.add_parser("book", help="build the HTML book")
    args = parser.parse_args(argv)
    if args.command == "demo":
        if args.epochs < 1:
            parser.error("--epochs must be >= 1")
        demo(args.epochs)
    elif args.command == "run":
        import yaml

        overrides = {}
        for item in args.set:
            key, sep, value = item.partition("=")
            if not sep:
                parser.error(f"--set expects KEY=VALUE, got {item!r}")
            overrides[key] = yaml.safe_load(value)
        run(args.config, args.only, args.output, overrides=overrides)
    elif args.command == "check":
        problems = check_configs()
        print("\n".join(problems) or "configs OK")
        raise SystemExit(1 if problems else 0)
    elif args.command == "book":
        book()


if __name__ == "__main__":
    main()
