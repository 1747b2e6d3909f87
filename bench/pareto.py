"""Accuracy against activation memory for every method (the paper's Pareto plot), Setup B.

Centralized Setup B on the credible experiment's model and data (``examples/credible.yaml``:
MobileNetV2 width 0.5, Fashion-MNIST at 32 px, pretrained on the whole server half for 5
epochs, ``common.train.pretrain_setup_b``, cached): for each seed the checkpoint is fine-tuned
for one epoch on the client half (all of it by default; ``--train-samples`` draws a seeded
subset) with each method x last_k x parameter, with the logit-adjusted loss of the client half's
class prior (``--loss``; ``common.train.log_prior``), then scored on the full test set
(``accuracy``, balanced classes) and on its largest subset with the client half's class mix
(``client_accuracy``, the distribution the fine-tuning data follow). Each point is the mean over
the seeds with the min-max range.

Speed: for last_k below all layers the frozen prefix is computed once per data set
(``common.featurecache``: the client half and the test images pass through it once, at the
earliest cut; later cuts are derived from it) and only the suffix is trained and scored, which
gives the whole model's logits and gradients. With all layers trainable there is no prefix: the
whole model trains for ``--all-steps`` steps of the seeded shuffle of the client half (a budget,
so that the bench fits in 45 minutes on 2 idle cores; ``--all-steps 0`` runs the whole epoch),
with its own cosine decay over those steps. ``step_ms`` is the time of the step that ran: the
suffix's for a cached point (``cut``, the stage the suffix starts at), the whole model's for
``cut`` None.

Every variant trains all 53 layers, depthwise convs and the Linear included (tested). Gradient
filtering keeps the classifier's 2-D Linear input whole (no spatial axis to pool; exact dW, so
gradfilter at last_k 1 is vanilla), and on the default model's last 4 layers the maps are
2 x 2, one patch for radius 2 and 4 alike, so both radii give the same point there.

Memory per point (the largest over seeds), always of the whole model on a batch of images:

- ``activation_bytes``: measured with ``common.memory.measure`` -- everything autograd keeps for
  backward (wrapped layers' factors, BatchNorm/ReLU residue, dropout noise, loss), the larger of
  the measurements before and after fine-tuning (ranks move with the weights);
- ``compressed_bytes``: the paper's metric, what the wrapped layers store for dW; the maximum
  over all fine-tuning steps (eps-ranks change every batch).

Prints a table, writes ``bench/results/pareto.json`` (with the wall time of the cache, of the
cached points and of the all-layer points, and the load average after each) and ``pareto.png``
(log-x memory vs accuracy, one series per method variant, the Pareto front circled, intervals as
error bars), and ends with a summary drawn from the means.

    python -m bench.pareto [--train-samples N] [--test-samples N] [--seeds 0 1 2]
                           [--all-steps N] [--threads N]
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

import numpy as np
import torch
from matplotlib.figure import Figure
from rich.console import Console
from rich.table import Table
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from bench.phases import Phases
from common.compression import compressed_bytes, layer_ranks, trainable_layers, wrap_last_layers
from common.config import ExperimentConfig
from common.data import dataset_spec, labels_of, load_dataset, matched_subset, subsample
from common.featurecache import FeatureCache, split
from common.memory import format_bytes, measure
from common.train import (
    batchnorm_eval,
    log_prior,
    pretrain_setup_b,
    setup_b_data,
    sgd,
    train,
)
from common.validate import load_config

ROOT = Path(__file__).resolve().parents[1]
CREDIBLE = ROOT / "examples" / "credible.yaml"
RESULTS = Path(__file__).resolve().parent / "results"
LAST_K = ("1", "2", "4", "8", "all")
DEFAULT_LAST_K = ("1", "2", "4", "all")
ALL_STEPS = 300  # whole-model steps per all-layer point (9,600 images): see --all-steps
TOLERANCE = 0.005  # half a point: about 1.5 standard errors of one 10,000-image accuracy
ACCURACIES = {"client_accuracy": "client-mix test", "accuracy": "balanced test"}
MEMORIES = {"activation_bytes": "measured activation memory",
            "compressed_bytes": "paper's compressed bytes"}


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
DEFAULT_VARIANTS = ("vanilla", "gradfilter R2", "gradfilter R4", "svd eps0.8", "svd eps0.9",
                    "hosvd eps0.8", "hosvd eps0.9", "asi eps0.8")
COLORS = {"vanilla": "black", "gradfilter": "tab:orange", "svd": "tab:blue",
          "hosvd": "tab:red", "asi": "tab:green"}


@dataclass(frozen=True)
class Point:
    """One fine-tuned configuration and what it cost: accuracies are means over ``seeds`` with
    their min-max range (``*_low``, ``*_high``), memory the largest over seeds, ``step_ms`` the
    mean, ``steps`` per seed, ``ranks`` the first seed's; ``cut``: the stage the trained suffix
    starts at (None: the whole model trained on images)."""

    label: str
    method: str
    last_k: int
    seeds: list[int]
    accuracy: float
    accuracy_low: float
    accuracy_high: float
    client_accuracy: float
    client_accuracy_low: float
    client_accuracy_high: float
    activation_bytes: int
    compressed_bytes: int
    compressed_bytes_mean: float
    training_bytes: int
    peak_forward_bytes: int
    step_ms: float
    ranks: list[list[int]]
    steps: int = 0
    cut: int | None = None


@dataclass(frozen=True)
class TestSets:
    """The balanced and client-mix test sets as positions into one union of test images, so
    that each model predicts every image once."""

    images: Subset
    parts: dict[str, np.ndarray]

    @classmethod
    def of(cls, dataset: Dataset, **parts: np.ndarray) -> TestSets:
        union = np.union1d(*parts.values()) if len(parts) > 1 else next(iter(parts.values()))
        return cls(Subset(dataset, union.tolist()),
                   {name: np.searchsorted(union, rows) for name, rows in parts.items()})

    @torch.no_grad()
    def accuracies(self, model: nn.Module, inputs: Dataset | None = None) -> dict[str, float]:
        """Accuracy of ``model`` (put in eval mode) on each part; ``inputs``: what ``model``
        reads for ``images`` (their cached features for a suffix), row for row."""
        model.eval()
        correct = torch.cat([model(batch).argmax(1) == targets for batch, targets
                             in DataLoader(inputs or self.images, batch_size=256)])
        return {name: correct[rows].float().mean().item() for name, rows in self.parts.items()}


@dataclass(frozen=True)
class Caches:
    """The frozen prefix's features of the client-half images some seed draws and of the test
    images (``common.featurecache``), and each seed's draw as positions into the former."""

    train: FeatureCache
    test: FeatureCache
    draws: dict[int, list[int]]


def run_point(
    pretrained: nn.Module, variant: Variant, last_k: int, caches: Caches,
    tests: TestSets, args: argparse.Namespace, seed: int,
    adjustment: torch.Tensor | None,
) -> Point:
    """Fine-tune a copy of ``pretrained`` with ``variant`` on its last ``last_k`` layers, its
    suffix on cached features where it has a frozen prefix (one seed: a Point whose ranges are
    that seed's value)."""
    model = wrap_last_layers(copy.deepcopy(pretrained), variant.method, last_k,
                             **dict(variant.params))
    batchnorm_eval(model)
    draw = caches.draws[seed]
    probe = next(iter(DataLoader(Subset(caches.train.data, draw), batch_size=args.batch_size)))
    trained, features = caches.train.view(model)
    cut = None if trained is model else split(model).cut
    budget = (args.all_steps or None) if cut is None else None

    def measured() -> tuple[int, int, int]:
        params = [p for p in model.parameters() if p.requires_grad]
        report = measure(model, *probe, nn.CrossEntropyLoss(), sgd(params, args.lr))
        return report.activation_bytes, report.training_bytes, report.peak_forward_bytes

    before = measured()
    stored: list[int] = []
    torch.manual_seed(seed)  # Dropout's masks: each point reproducible whatever ran before
    started = time.perf_counter()
    result = train(trained, Subset(features, draw), lr=args.lr, batch_size=args.batch_size,
                   seed=seed, max_steps=budget, logit_adjustment=adjustment,
                   on_step=lambda step, total, loss: stored.append(compressed_bytes(model)))
    seconds = time.perf_counter() - started
    after = measured()
    scores = tests.accuracies(*caches.test.view(model))
    accuracy, client_accuracy = scores["accuracy"], scores["client_accuracy"]
    return Point(
        label=variant.label, method=variant.method, last_k=last_k, seeds=[seed],
        accuracy=accuracy, accuracy_low=accuracy, accuracy_high=accuracy,
        client_accuracy=client_accuracy, client_accuracy_low=client_accuracy,
        client_accuracy_high=client_accuracy, activation_bytes=max(before[0], after[0]),
        compressed_bytes=max(stored), compressed_bytes_mean=statistics.fmean(stored),
        training_bytes=max(before[1], after[1]),
        peak_forward_bytes=max(before[2], after[2]), step_ms=1000 * seconds / result.steps,
        ranks=layer_ranks(model), steps=result.steps, cut=cut,
    )


def combine(runs: list[Point]) -> Point:
    """One point from the same configuration's single-seed runs (see :class:`Point`)."""
    first = runs[0]
    acc = [p.accuracy for p in runs]
    client = [p.client_accuracy for p in runs]
    return Point(
        label=first.label, method=first.method, last_k=first.last_k,
        seeds=[s for p in runs for s in p.seeds], accuracy=statistics.fmean(acc),
        accuracy_low=min(acc), accuracy_high=max(acc),
        client_accuracy=statistics.fmean(client), client_accuracy_low=min(client),
        client_accuracy_high=max(client),
        activation_bytes=max(p.activation_bytes for p in runs),
        compressed_bytes=max(p.compressed_bytes for p in runs),
        compressed_bytes_mean=statistics.fmean(p.compressed_bytes_mean for p in runs),
        training_bytes=max(p.training_bytes for p in runs),
        peak_forward_bytes=max(p.peak_forward_bytes for p in runs),
        step_ms=statistics.fmean(p.step_ms for p in runs), ranks=first.ranks,
        steps=first.steps, cut=first.cut,
    )


def pareto_front(points: list[Point], memory: str, accuracy: str) -> list[Point]:
    """Points no other point beats: none has memory <= and accuracy >= with one strict."""

    def coords(p: Point) -> tuple[float, float]:
        return getattr(p, memory), getattr(p, accuracy)

    def beaten(p: Point) -> bool:
        (m, a) = coords(p)
        return any(qm <= m and qa >= a and (qm, qa) != (m, a) for qm, qa in map(coords, points))

    return sorted((p for p in points if not beaten(p)), key=coords)


def dominated_share(winners: list[Point], others: list[Point], memory: str, accuracy: str,
                    tolerance: float) -> tuple[int, int]:
    """How many ``others`` some winner matches: memory <= and accuracy >= theirs - tolerance."""
    count = sum(
        any(getattr(w, memory) <= getattr(o, memory)
            and getattr(w, accuracy) >= getattr(o, accuracy) - tolerance for w in winners)
        for o in others
    )
    return count, len(others)


def summarize(points: list[Point], num_layers: int) -> list[str]:
    """Conclusions drawn from the numbers, for each accuracy and memory metric."""
    lines = []
    hosvd = [p for p in points if p.method == "hosvd"]
    for accuracy, accuracy_name in ACCURACIES.items():
        for memory, memory_name in MEMORIES.items():
            front = pareto_front(points, memory, accuracy)
            lines.append(f"[{accuracy_name} / {memory_name}] Pareto front: "
                         + ", ".join(f"{p.label} k={p.last_k}" for p in front) + ".")
            verdicts = []
            for family in ("svd", "gradfilter", "vanilla", "asi"):
                others = [p for p in points if p.method == family]
                if not others:
                    continue
                strict, total = dominated_share(hosvd, others, memory, accuracy, 0.0)
                loose, _ = dominated_share(hosvd, others, memory, accuracy, TOLERANCE)
                verdicts.append(f"{family} {'yes' if loose == total else 'no'} "
                                f"({strict}/{total} strictly, {loose}/{total} within "
                                f"{100 * TOLERANCE:g} pt)")
            lines.append("  HOSVD Pareto-superior to: " + "; ".join(verdicts) + ".")
    vanilla_last = next(p for p in points if p.method == "vanilla" and p.last_k == 1)
    for p in (p for p in hosvd if p.last_k == num_layers):
        for memory in MEMORIES:
            mine, theirs = getattr(p, memory), getattr(vanilla_last, memory)
            lines.append(
                f"{p.label} on all {num_layers} layers, {memory}: {format_bytes(mine)}, "
                f"{'less' if mine < theirs else 'more'} than vanilla on the last layer "
                f"({format_bytes(theirs)}); balanced accuracy {p.accuracy:.2%} vs "
                f"{vanilla_last.accuracy:.2%}, client-mix {p.client_accuracy:.2%} vs "
                f"{vanilla_last.client_accuracy:.2%}."
            )
    for p in hosvd:
        same = next((v for v in points if v.method == "vanilla" and v.last_k == p.last_k), None)
        if same is not None:
            lines.append(
                f"{p.label} k={p.last_k} vs vanilla k={p.last_k}: balanced accuracy "
                f"{100 * (p.accuracy - same.accuracy):+.2f} pt, "
                f"{same.activation_bytes / p.activation_bytes:.1f}x less measured activation "
                f"memory, {same.compressed_bytes / p.compressed_bytes:.1f}x less paper metric."
            )
    return lines


def plot(points: list[Point], baselines: dict[str, float], path: Path) -> None:
    """2 x 2 panels (accuracy kind x memory metric), log-x, one line per variant, the Pareto
    front circled, the pretrained model's accuracy dotted."""
    figure = Figure(figsize=(16, 10), layout="constrained")
    axes = figure.subplots(2, 2, sharex="col")
    for row, (accuracy, accuracy_name) in enumerate(ACCURACIES.items()):
        for col, (memory, memory_name) in enumerate(MEMORIES.items()):
            axis = axes[row][col]
            for variant in VARIANTS:
                series = sorted((p for p in points if p.label == variant.label),
                                key=lambda p: p.last_k)
                if not series:
                    continue
                style = "--" if variant.params and variant.params[0][1] in (0.9, 4) else "-"
                ys = [getattr(p, accuracy) for p in series]
                errors = [[y - getattr(p, f"{accuracy}_low") for p, y in zip(series, ys,
                                                                             strict=True)],
                          [getattr(p, f"{accuracy}_high") - y for p, y in zip(series, ys,
                                                                              strict=True)]]
                axis.errorbar([getattr(p, memory) for p in series], ys, yerr=errors,
                              fmt=style, marker="o", ms=4, capsize=2,
                              color=COLORS[variant.method], label=variant.label)
            front = pareto_front(points, memory, accuracy)
            xs, ys = [getattr(p, memory) for p in front], [getattr(p, accuracy) for p in front]
            axis.step(xs, ys, where="post", color="grey", lw=1, alpha=0.6)
            axis.scatter(xs, ys, s=140, facecolors="none", edgecolors="black",
                         label="Pareto front")
            axis.axhline(baselines[accuracy], color="grey", ls=":", label="pretrained")
            axis.set_xscale("log")
            axis.set_title(f"{accuracy_name} vs {memory_name}")
            axis.set_xlabel("bytes (log)")
            axis.set_ylabel(f"accuracy, {accuracy_name}")
            axis.grid(alpha=0.3)
    figure.legend(*axes[0][0].get_legend_handles_labels(), loc="outside right center",
                  fontsize=8)
    seeds = len(points[0].seeds)
    figure.suptitle(f"Setup B fine-tuning, last k Conv2d/Linear layers; mean of {seeds} "
                    "seeds, bars: min-max")
    figure.savefig(path, dpi=110)


def print_table(console: Console, points: list[Point], baselines: dict[str, float]) -> None:
    table = Table(title=f"Setup B Pareto sweep (pretrained: {baselines['accuracy']:.2%} "
                        f"balanced, {baselines['client_accuracy']:.2%} client-mix)")
    for column in ("method", "last k", "acc balanced", "acc client-mix", "kept (measured)",
                   "compressed (max)", "training", "steps", "ms/step"):
        table.add_column(column, justify="left" if column == "method" else "right",
                         no_wrap=True)
    for p in points:
        table.add_row(p.label, str(p.last_k),
                      f"{p.accuracy:.2%} [{p.accuracy_low:.2%}, {p.accuracy_high:.2%}]",
                      f"{p.client_accuracy:.2%} [{p.client_accuracy_low:.2%}, "
                      f"{p.client_accuracy_high:.2%}]",
                      format_bytes(p.activation_bytes), format_bytes(p.compressed_bytes),
                      format_bytes(p.training_bytes), str(p.steps), f"{p.step_ms:.1f}")
    console.print(table)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=CREDIBLE,
                        help="experiment whose model, data, seed and pretraining are used")
    parser.add_argument("--train-samples", type=int, default=None,
                        help="seeded draw from the client half per seed, one epoch "
                        "(default: all of it)")
    parser.add_argument("--test-samples", type=int, default=None,
                        help="cap on each test set (balanced, client-mix; default: the "
                        "whole test set and its largest client-mix subset)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--loss", choices=("logit-adjusted", "cross-entropy"),
                        default="logit-adjusted", help="fine-tuning loss (client_loss)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_VARIANTS),
                        choices=[v.label for v in VARIANTS], metavar="VARIANT")
    parser.add_argument("--last-k", nargs="+", default=list(DEFAULT_LAST_K), choices=LAST_K)
    parser.add_argument("--all-steps", type=int, default=ALL_STEPS,
                        help="steps of the all-layer points, a seeded draw of the client half "
                        "(0: one whole epoch)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[Point]:
    args = parse_args(argv)
    if args.all_steps < 0:
        raise SystemExit(f"--all-steps: must be non-negative, got {args.all_steps}")
    if args.threads:
        torch.set_num_threads(args.threads)
    console = Console(width=None if sys.stdout.isatty() else 170)
    phases = Phases()
    config: ExperimentConfig = load_config(args.config)
    pretrained = pretrain_setup_b(config)
    _, client_half = setup_b_data(config)
    _, test_set = load_dataset(config.dataset, config.image_size)
    balanced = subsample(range(len(test_set)), args.test_samples, config.seed)
    client_labels = labels_of(client_half.dataset)[client_half.indices]
    client_mix = matched_subset(labels_of(test_set), client_labels, args.test_samples,
                                config.seed)
    tests = TestSets.of(test_set, accuracy=balanced, client_accuracy=client_mix)
    adjustment = None
    if args.loss == "logit-adjusted":
        adjustment = log_prior(torch.as_tensor(client_labels),
                               dataset_spec(config.dataset).num_classes)
    baselines = tests.accuracies(copy.deepcopy(pretrained))
    num_layers = len(trainable_layers(pretrained))
    ks = sorted(num_layers if k == "all" else int(k) for k in args.last_k)
    draws = {seed: subsample(np.arange(len(client_half)), args.train_samples, seed)
             for seed in args.seeds}
    drawn = np.unique(np.concatenate(list(draws.values())))  # what the prefix must see
    caches = Caches(
        FeatureCache(pretrained, Subset(client_half, drawn.tolist())),
        FeatureCache(pretrained, tests.images),
        {seed: np.searchsorted(drawn, draw).tolist() for seed, draw in draws.items()})
    phases.end("setup")
    cuts = {k: split(wrap_last_layers(copy.deepcopy(pretrained), "vanilla", k)) for k in ks}
    for cut in sorted(parts.cut for parts in cuts.values() if parts):  # the earliest first:
        caches.train.at(cut)  # later cuts are derived from it
        caches.test.at(cut)
    phases.end("cache")
    variants = [v for v in VARIANTS if v.label in args.methods]
    runs: dict[tuple[str, int], Point] = {}
    for phase, group in (("cached", [k for k in ks if cuts[k]]),
                         ("whole", [k for k in ks if not cuts[k]])):
        for last_k in group:
            for variant in variants:
                point = combine([run_point(pretrained, variant, last_k, caches, tests, args,
                                           seed, adjustment) for seed in args.seeds])
                runs[variant.label, last_k] = point
                console.print(
                    f"{point.label:>14} k={last_k:<3} acc {point.accuracy:.2%} "
                    f"client-mix {point.client_accuracy:.2%}  "
                    f"kept {format_bytes(point.activation_bytes):>10}  "
                    f"compressed {format_bytes(point.compressed_bytes):>10}  "
                    f"{point.steps} x {point.step_ms:.1f} ms/step  "
                    f"[{phases.seconds:.0f} s]"
                )
        phases.end(phase)
    points = [runs[v.label, k] for v in variants for k in ks]
    print_table(console, points, baselines)
    summary = summarize(points, num_layers) if {"hosvd", "vanilla"} <= {
        p.method for p in points} and 1 in ks else []
    for line in summary:
        console.print(line, markup=False)
    args.out.mkdir(parents=True, exist_ok=True)
    plot(points, baselines, args.out / "pareto.png")
    record = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "experiment": config.model_dump(),
        "num_layers": num_layers,
        "pretrained_accuracy": baselines,
        **phases.record(),
        "train_images": {seed: len(draw) for seed, draw in caches.draws.items()},
        "test_images": {name: len(rows) for name, rows in tests.parts.items()},
        "points": [asdict(p) for p in points],
        "summary": summary,
    }
    (args.out / "pareto.json").write_text(json.dumps(record, indent=1))
    console.print(f"wrote {args.out / 'pareto.json'} and {args.out / 'pareto.png'} "
                  f"in {record['seconds']:.0f} s: {phases.line()}")
    return points


if __name__ == "__main__":
    main()
