"""The compression code of a past commit against the working tree's, in one process:
``python -m bench.regression [--baseline 43b6986] [--batch 64] [--reps 41]``.

"No slower than before" is only a measurement when both codes run on the same model, batch,
threads and load. Here the baseline's ``common/compression`` package is read with ``git show``
into a temporary package (it must import its own modules relatively, as every version so far
does) and each method's whole-model training step of the default model (MobileNetV2 width 0.5,
Fashion-MNIST at 32 px, last 4 Conv2d/Linear layers trained; forward + cross-entropy +
backward) runs wrapped by either code, round-robin (``bench.ops.round_robin``: medians; the
two codes of a method one after the other), with
``bench.ops``'s threads, allocator and OpenMP setting. Two setups of the model (seed 0):

- ``raw``: BatchNorm statistics at their initial values, the default model of ``bench.ops``
  up to 43b6986, whose activations gave HOSVD ranks 1-3 (the issue's figures were taken there);
- ``calibrated``: BatchNorm statistics of the images (``bench.ops.calibrated_model``; ranks
  26-73).

Each time is given as a ratio to vanilla of the same code and as current / baseline. Prints a
table and writes ``bench/results/regression.json``.
"""
# ruff: noqa: E402

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import copy
import importlib
import json
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table
from torch import nn

from bench.allocator import add_option, use
from bench.ops import CASES, Case, batches, calibrated_model, round_robin
from common.compression import layer_ranks, wrap_last_layers
from common.models import build_model

RESULTS = Path(__file__).resolve().parent / "results" / "regression.json"
PACKAGE = "common/compression"
METHODS = {"vanilla": ("vanilla", {}), "hosvd eps0.8": ("hosvd", {"eps": 0.8}),
           "asi eps0.8 ranks": ("asi", {"eps": 0.8})}
LAST_K = 4
DEFAULT = next(c for c in CASES if not c.realistic)
ABSOLUTE_IMPORT = re.compile(r"^\s*(from|import)\s+common\b", re.MULTILINE)


def baseline_package(commit: str, into: Path) -> ModuleType:
    """``common/compression`` as it was at ``commit``, imported as ``baseline_compression``."""
    git = ["git", "-C", str(Path(__file__).resolve().parents[1])]
    names = subprocess.run([*git, "ls-tree", "--name-only", f"{commit}:{PACKAGE}"],
                           check=True, capture_output=True, text=True).stdout.split()
    package = into / "baseline_compression"
    package.mkdir()
    for name in names:
        source = subprocess.run([*git, "show", f"{commit}:{PACKAGE}/{name}"], check=True,
                                capture_output=True, text=True).stdout
        if ABSOLUTE_IMPORT.search(source):
            raise SystemExit(f"--baseline: {PACKAGE}/{name} at {commit} imports from common by "
                             "name; only a package of relative imports loads beside the "
                             "working tree's")
        (package / name).write_text(source)
    for loaded in [m for m in sys.modules if m.split(".")[0] == package.name]:
        del sys.modules[loaded]  # another commit's, loaded before
    sys.path.insert(0, str(into))
    return importlib.import_module(package.name)


def default_model(setup: str, images: torch.Tensor, case: Case = DEFAULT) -> nn.Module:
    """The default model (seed 0), its BatchNorm statistics ``raw`` or ``calibrated``."""
    if setup == "calibrated":
        return calibrated_model(case, images)
    torch.manual_seed(0)
    return build_model(case.model, num_classes=10, in_channels=images.shape[1],
                       image_size=case.image_size, width=case.width).eval().requires_grad_(False)


def bench_setup(setup: str, wraps: dict[str, Callable[..., nn.Module]], batch: int,
                reps: int) -> dict[str, dict]:
    """Model-step times of every (code, method), with ratios to that code's vanilla."""
    data = batches(DEFAULT, batch, 3)
    base = default_model(setup, data[0][0])
    models = {(code, name): wrap(copy.deepcopy(base), method, LAST_K, **params)
              for name, (method, params) in METHODS.items() for code, wrap in wraps.items()}

    def step(model: nn.Module) -> Callable[[int], None]:
        def run(rep: int) -> None:
            images, labels = data[rep % len(data)]
            F.cross_entropy(model(images), labels).backward()
        return run

    times = round_robin({key: step(m) for key, m in models.items()}, reps)
    results: dict[str, dict] = {}
    for (code, name), t in times.items():
        vanilla = times[(code, "vanilla")]
        results.setdefault(name, {})[code] = {
            "model_ms": t["ms"], "model_cpu_ms": t["cpu_ms"],
            "ratio": t["ms"] / vanilla["ms"], "cpu_ratio": t["cpu_ms"] / vanilla["cpu_ms"]}
    for name, by_code in results.items():
        by_code["current_over_baseline"] = (by_code["current"]["model_ms"]
                                            / by_code["baseline"]["model_ms"])
        by_code["ranks"] = layer_ranks(models[("current", name)])
    return results


def table(title: str, results: dict[str, dict]) -> Table:
    out = Table(title=title)
    for column in ("method", "baseline ms", "x van", "current ms", "x van ", "current / base",
                   "ranks (current)"):
        out.add_column(column, justify="left" if column.startswith(("method", "ranks")) else
                       "right")
    for name, r in results.items():
        base, now = r["baseline"], r["current"]
        out.add_row(name, f"{base['model_ms']:.1f}", f"{base['ratio']:.2f}",
                    f"{now['model_ms']:.1f}", f"{now['ratio']:.2f}",
                    f"{r['current_over_baseline']:.2f}",
                    " ".join(map(str, r["ranks"])) if any(r["ranks"]) else "")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="43b6986", help="git commit to compare against")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--reps", type=int, default=41)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--out", type=Path, default=RESULTS)
    add_option(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    use(args.allocator)
    console = Console(width=140)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        baseline = baseline_package(args.baseline, Path(tmp))
        wraps = {"baseline": baseline.wrap_last_layers, "current": wrap_last_layers}
        setups = {}
        for setup in ("raw", "calibrated"):
            setups[setup] = bench_setup(setup, wraps, args.batch, args.reps)
            console.print(table(f"default model, {setup} BatchNorm, batch {args.batch}, "
                                f"{args.baseline} vs working tree (load "
                                f"{os.getloadavg()[0]:.2f})", setups[setup]))
    load_after = os.getloadavg()
    console.print(f"load average before {load_before}, after {load_after}")
    environment = {"torch": torch.__version__, "threads": torch.get_num_threads(),
                   "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                   "allocator": args.allocator, "batch": args.batch, "reps": args.reps,
                   "baseline": args.baseline,
                   "load_average_before": load_before, "load_average_after": load_after}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"environment": environment, "setups": setups}, indent=2))
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
