"""Accuracy against activation memory for every method (the paper's Pareto plot), Setup B.

Centralized Setup B on the default experiment's model and data (``examples/quickstart.yaml``:
MobileNetV2 width 0.5, Fashion-MNIST at 32 px): the checkpoint pretrained on the server half
(``common.train.pretrain_setup_b``, cached) is fine-tuned on a subsample of the client half with
each method x last_k x parameter, then scored on the test set. Memory per point:

- ``activation_bytes``: measured with ``common.memory.measure`` -- everything autograd keeps for
  backward (wrapped layers' factors, BatchNorm/ReLU residue, dropout noise, loss), the larger of
  the measurements before and after fine-tuning (ranks move with the weights);
- ``compressed_bytes``: the paper's metric, what the wrapped layers store for dW; the maximum
  over all fine-tuning steps (eps-ranks change every batch).

Prints a table, writes ``bench/results/pareto.json`` and ``pareto.png`` (log-x memory vs accuracy,
one series per method variant, the Pareto front circled), and ends with a summary drawn from
the numbers. Defaults (100 steps of 32 per point, 2000 test images, 45 points) finish in about
15 minutes on 2 idle cores; ``--train-samples``/``--test-samples`` enlarge it.

    python -m bench.pareto [--train-samples 3200] [--test-samples 2000] [--threads N]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from matplotlib.figure import Figure
from rich.console import Console
from rich.table import Table
from torch import nn
from torch.utils.data import DataLoader, Subset

from common.compression import compressed_bytes, layer_ranks, trainable_layers, wrap_last_layers
from common.config import ExperimentConfig, load_config
from common.data import load_dataset, subsample
from common.memory import format_bytes, measure
from common.train import batchnorm_eval, evaluate, pretrain_setup_b, setup_b_data, sgd, train

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "examples" / "quickstart.yaml"
RESULTS = Path(__file__).resolve().parent / "results"
LAST_K = ("1", "2", "4", "8", "all")
TOLERANCE = 0.01  # 1 accuracy point, about one standard error at 2000 test images


@dataclass(frozen=True)
class Variant:
    """One series of the plot: a method with fixed parameters."""

    label: str
    method: str
    params: tuple[tuple[str, float], ...] = ()


VARIANTS = (
    Variant("vanilla", "vanilla"),
    Variant("gradfilter R2", "gradfilter", (("radius", 2),)),
    Variant("gradfilter R4", "gradfilter", (("radius", 4),)),
    Variant("svd eps0.8", "svd", (("eps", 0.8),)),
    Variant("svd eps0.9", "svd", (("eps", 0.9),)),
    Variant("hosvd eps0.8", "hosvd", (("eps", 0.8),)),
    Variant("hosvd eps0.9", "hosvd", (("eps", 0.9),)),
    Variant("asi eps0.8", "asi", (("eps", 0.8),)),
    Variant("asi eps0.9", "asi", (("eps", 0.9),)),
)
COLORS = {"vanilla": "black", "gradfilter": "tab:orange", "svd": "tab:blue",
          "hosvd": "tab:red", "asi": "tab:green"}


@dataclass(frozen=True)
class Point:
    """One fine-tuned configuration and what it cost."""

    label: str
    method: str
    last_k: int
    accuracy: float
    loss: float
    activation_bytes: int
    compressed_bytes: int
    compressed_bytes_mean: float
    training_bytes: int
    peak_forward_bytes: int
    step_ms: float
    ranks: list[list[int]]


def run_point(
    pretrained: nn.Module, variant: Variant, last_k: int, data: Subset, test: Subset,
    args: argparse.Namespace,
) -> Point:
    """Fine-tune a copy of ``pretrained`` with ``variant`` on its last ``last_k`` layers."""
    model = wrap_last_layers(copy.deepcopy(pretrained), variant.method, last_k,
                             **dict(variant.params))
    batchnorm_eval(model)
    probe = next(iter(DataLoader(data, batch_size=args.batch_size)))

    def measured() -> tuple[int, int, int]:
        params = [p for p in model.parameters() if p.requires_grad]
        report = measure(model, *probe, nn.CrossEntropyLoss(), sgd(params, args.lr))
        return report.activation_bytes, report.training_bytes, report.peak_forward_bytes

    before = measured()
    stored: list[int] = []
    started = time.perf_counter()
    result = train(model, data, lr=args.lr, batch_size=args.batch_size, seed=args.seed,
                   on_step=lambda step, total, loss: stored.append(compressed_bytes(model)))
    seconds = time.perf_counter() - started
    after = measured()
    loss, accuracy = evaluate(model, test)
    return Point(
        label=variant.label, method=variant.method, last_k=last_k, accuracy=accuracy,
        loss=loss, activation_bytes=max(before[0], after[0]), compressed_bytes=max(stored),
        compressed_bytes_mean=statistics.fmean(stored), training_bytes=max(before[1], after[1]),
        peak_forward_bytes=max(before[2], after[2]), step_ms=1000 * seconds / result.steps,
        ranks=layer_ranks(model),
    )


def pareto_front(points: list[Point], metric: str) -> list[Point]:
    """Points no other point beats: none has memory <= and accuracy >= with one strict."""

    def beaten(p: Point) -> bool:
        return any(
            getattr(q, metric) <= getattr(p, metric) and q.accuracy >= p.accuracy
            and (getattr(q, metric) < getattr(p, metric) or q.accuracy > p.accuracy)
            for q in points
        )

    return sorted((p for p in points if not beaten(p)), key=lambda p: getattr(p, metric))


def dominated_share(winners: list[Point], others: list[Point], metric: str,
                    tolerance: float) -> tuple[int, int]:
    """How many ``others`` some winner matches: memory <= and accuracy >= theirs - tolerance."""
    count = sum(
        any(getattr(w, metric) <= getattr(o, metric) and w.accuracy >= o.accuracy - tolerance
            for w in winners)
        for o in others
    )
    return count, len(others)


def summarize(points: list[Point], num_layers: int) -> list[str]:
    """Conclusions drawn from the numbers (see the module docstring for the metrics)."""
    lines = []
    hosvd = [p for p in points if p.method == "hosvd"]
    for metric, name in (("activation_bytes", "measured activation memory"),
                         ("compressed_bytes", "the paper's compressed bytes")):
        front = pareto_front(points, metric)
        labels = ", ".join(f"{p.label} k={p.last_k}" for p in front)
        lines.append(f"Pareto front by {name}: {labels}.")
        verdicts = []
        for family in ("svd", "gradfilter", "vanilla", "asi"):
            others = [p for p in points if p.method == family]
            if not others:
                continue
            strict, total = dominated_share(hosvd, others, metric, 0.0)
            loose, _ = dominated_share(hosvd, others, metric, TOLERANCE)
            verdict = "yes" if loose == total else "no"
            verdicts.append(f"{family}: {verdict} (hosvd matches {strict}/{total} strictly, "
                            f"{loose}/{total} within {TOLERANCE:.0%})")
        lines.append(f"HOSVD Pareto-superior by {name}? " + "; ".join(verdicts) + ".")
    vanilla_last = next(p for p in points if p.method == "vanilla" and p.last_k == 1)
    for p in (p for p in hosvd if p.last_k == num_layers):
        for metric in ("activation_bytes", "compressed_bytes"):
            mine, theirs = getattr(p, metric), getattr(vanilla_last, metric)
            verdict = "less" if mine < theirs else "more"
            lines.append(
                f"{p.label} on all {num_layers} layers ({metric}): {format_bytes(mine)} -- "
                f"{verdict} than vanilla on the last layer ({format_bytes(theirs)}); "
                f"accuracy {p.accuracy:.2%} vs {vanilla_last.accuracy:.2%}."
            )
    return lines


def plot(points: list[Point], baseline: float, path: Path) -> None:
    """Two panels (measured / paper's memory), log-x, one line per variant, front circled."""
    figure = Figure(figsize=(16, 5.5), layout="constrained")
    axes = figure.subplots(1, 2, sharey=True)
    for axis, metric, title in zip(
        axes, ("activation_bytes", "compressed_bytes"),
        ("measured: all tensors kept for backward", "paper's metric: stored dW inputs (max)"),
        strict=True,
    ):
        for variant in VARIANTS:
            series = sorted((p for p in points if p.label == variant.label),
                            key=lambda p: p.last_k)
            if not series:
                continue
            style = "--" if variant.params and variant.params[0][1] in (0.9, 4) else "-"
            axis.plot([getattr(p, metric) for p in series], [p.accuracy for p in series],
                      style, marker="o", ms=4, color=COLORS[variant.method],
                      label=variant.label)
        front = pareto_front(points, metric)
        axis.step([getattr(p, metric) for p in front], [p.accuracy for p in front],
                  where="post", color="grey", lw=1, alpha=0.6)
        axis.scatter([getattr(p, metric) for p in front], [p.accuracy for p in front],
                     s=140, facecolors="none", edgecolors="black", label="Pareto front")
        axis.axhline(baseline, color="grey", ls=":", label="pretrained, no fine-tuning")
        axis.set_xscale("log")
        axis.set_xlabel("bytes (log)")
        axis.set_title(title)
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy")
    figure.legend(*axes[0].get_legend_handles_labels(), loc="outside right center", fontsize=8)
    figure.suptitle("Setup B fine-tuning: accuracy vs activation memory (last k in 1,2,4,8,all)")
    figure.savefig(path, dpi=120)


def print_table(console: Console, points: list[Point], baseline: float) -> None:
    table = Table(title=f"Setup B Pareto sweep (pretrained accuracy {baseline:.2%})")
    for column in ("method", "last k", "accuracy", "kept (measured)", "compressed (max)",
                   "training", "ms/step"):
        table.add_column(column, justify="left" if column == "method" else "right",
                         no_wrap=True)
    for p in points:
        table.add_row(p.label, str(p.last_k), f"{p.accuracy:.2%}",
                      format_bytes(p.activation_bytes), format_bytes(p.compressed_bytes),
                      format_bytes(p.training_bytes), f"{p.step_ms:.0f}")
    console.print(table)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=QUICKSTART,
                        help="experiment whose model, data, seed and pretraining are used")
    parser.add_argument("--train-samples", type=int, default=3200,
                        help="fine-tuning subsample of the client half (one epoch)")
    parser.add_argument("--test-samples", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--methods", nargs="+", default=[v.label for v in VARIANTS],
                        choices=[v.label for v in VARIANTS], metavar="VARIANT")
    parser.add_argument("--last-k", nargs="+", default=list(LAST_K), choices=LAST_K)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[Point]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    console = Console(width=None if sys.stdout.isatty() else 120)
    started = time.perf_counter()
    config: ExperimentConfig = load_config(args.config)
    pretrained = pretrain_setup_b(config)
    _, client_half = setup_b_data(config)
    indices = subsample(client_half.indices, args.train_samples, args.seed)
    data = Subset(client_half.dataset, indices.tolist())
    _, test_set = load_dataset(config.dataset, config.image_size)
    test = Subset(test_set, subsample(range(len(test_set)), args.test_samples, args.seed).tolist())
    _, baseline = evaluate(pretrained, test)
    num_layers = len(trainable_layers(pretrained))
    ks = [num_layers if k == "all" else int(k) for k in args.last_k]
    points = []
    for variant in (v for v in VARIANTS if v.label in args.methods):
        for last_k in ks:
            point = run_point(pretrained, variant, last_k, data, test, args)
            points.append(point)
            console.print(
                f"{point.label:>14} k={last_k:<3} acc {point.accuracy:.2%}  "
                f"kept {format_bytes(point.activation_bytes):>10}  "
                f"compressed {format_bytes(point.compressed_bytes):>10}  "
                f"{point.step_ms:.0f} ms/step  [{time.perf_counter() - started:.0f} s]"
            )
    print_table(console, points, baseline)
    summary = summarize(points, num_layers) if {"hosvd", "vanilla"} <= {
        p.method for p in points} and 1 in ks else []
    for line in summary:
        console.print(line)
    args.out.mkdir(parents=True, exist_ok=True)
    plot(points, baseline, args.out / "pareto.png")
    record = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "experiment": config.model_dump(),
        "num_layers": num_layers,
        "pretrained_accuracy": baseline,
        "seconds": time.perf_counter() - started,
        "points": [asdict(p) for p in points],
        "summary": summary,
    }
    (args.out / "pareto.json").write_text(json.dumps(record, indent=1))
    console.print(f"wrote {args.out / 'pareto.json'} and {args.out / 'pareto.png'} "
                  f"in {record['seconds']:.0f} s")
    return points


if __name__ == "__main__":
    main()
