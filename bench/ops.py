"""Benchmark of the compressed-activation ops on real layer shapes: `python -m bench.ops`.

Shape suite (batch 32 and 64; `--quick`: batch 64, fewer repetitions):
- MobileNetV2 width 1.0 at 224 px, its last 4 Conv2d layers (the 7x7 stage: block 17's
  1x1 160->960, depthwise 3x3 960, 1x1 960->320, then the 1x1 320->1280 head);
- MobileNetV2 width 1.0 at 224 px, the 14x14 stage's two residual blocks 12-13 (1x1 96->576,
  depthwise 3x3 576, 1x1 576->96, twice);
- ResNet18 at 224 px, layer4 (3x3 convs at 7x7x512 and the strided entry from 14x14x256,
  with its 1x1 strided shortcut);
- the default model: MobileNetV2 width 0.5 at 32 px, its last 4 Conv2d/Linear layers.

For each case and method (vanilla, gradfilter R2, svd, hosvd eps 0.8 / 0.9, asi with the eps-0.8
ranks and with a fixed rank):
- region step: forward + backward of the wrapped layers (and the lean ReLU/BN between them) fed
  the stored input activation of the first one, so the frozen prefix is excluded; dY fixed;
- model step: forward of the whole model + cross-entropy + backward, the same layers trainable;
- stored bytes (the paper's metric), measured activation bytes of the region step (what autograd
  really keeps, ``common.memory.measure``) and the ranks.
Times are medians of methods timed round-robin in one process (load from other processes hits
them alike), as ratios to vanilla, with the minor page faults of each step; the load average
and the allocator are printed and stored. ``--allocator steady`` (the default) keeps freed
memory in the process so that a step's time is its compute; ``--allocator glibc`` measures
malloc's defaults, where every method pays page faults (see ``bench.allocator``).

Decomposition: the Gram-route HOSVD against the original code's full-SVD HOSVD on every
wrapped layer's input of the suite, identical ranks asserted.

Writes bench/results/ops.json (or ``--out``) and beside it ``ops.png``: per case, each method's
region-step time against its measured activation memory, both as ratios to vanilla, with the
targets drawn. ``--replot`` redraws the figure and reprints the targets from the JSON alone.

Inputs are Fashion-MNIST test images (upsampled to 224 px, 3 channels) through the model, whose
BatchNorm statistics are calibrated on those images first (random-init weights otherwise;
no pretrained weights are downloaded).

OpenMP's default busy-waiting burns time slices at every barrier on shared cores (measured:
small LAPACK calls 5-10x slower), so OMP_WAIT_POLICY defaults to PASSIVE here; it must be set
before torch loads OpenMP, hence before the imports.
"""
# ruff: noqa: E402

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import copy
import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from matplotlib.figure import Figure
from rich.console import Console
from rich.table import Table

from bench.allocator import add_option, minor_faults, use
from bench.pareto import COLORS
from common.compression import (
    compressed_bytes,
    hosvd,
    layer_ranks,
    reference_hosvd,
    trainable_layers,
    wrap_last_layers,
)
from common.compression.rank import eps_ranks
from common.data import load_dataset
from common.memory import measure
from common.models import build_model

RESULTS = Path(__file__).parent / "results" / "ops.json"
FIXED_RANK = 8
METHODS: dict[str, tuple[str, dict]] = {
    "vanilla": ("vanilla", {}),
    "gradfilter R2": ("gradfilter", {"radius": 2}),
    "svd eps0.8": ("svd", {"eps": 0.8}),
    "hosvd eps0.8": ("hosvd", {"eps": 0.8}),
    "hosvd eps0.9": ("hosvd", {"eps": 0.9}),
    "asi eps0.8 ranks": ("asi", {"eps": 0.8}),
    f"asi rank {FIXED_RANK}": ("asi", {"rank": FIXED_RANK}),
}
# max region step time / vanilla at the largest batch, on every realistic shape
TARGETS = {"hosvd eps0.8": 2.0, "asi eps0.8 ranks": 1.0, f"asi rank {FIXED_RANK}": 1.0}
DECOMPOSITION_SPEEDUP = 10.0
CLASSES = 10


@dataclass(frozen=True)
class Case:
    """A model and the consecutive modules (``region``) whose Conv2d/Linear layers train."""

    name: str
    model: str
    width: float
    image_size: int
    region: Callable[[nn.Module], nn.Sequential]
    realistic: bool = True  # held to TARGETS


def _mobilenet_7x7(m: nn.Module) -> nn.Sequential:
    return nn.Sequential(m.features[17], m.features[18])


def _mobilenet_14x14(m: nn.Module) -> nn.Sequential:
    return nn.Sequential(m.features[12], m.features[13])


def _resnet_layer4(m: nn.Module) -> nn.Sequential:
    return nn.Sequential(m.layer4)


def _default_last4(m: nn.Module) -> nn.Sequential:
    return nn.Sequential(m.features[17].conv[1:], m.features[18], m.pool, nn.Flatten(1),
                         m.classifier)


CASES = (
    Case("mobilenetv2 224px last 4 conv (7x7)", "mobilenetv2", 1.0, 224, _mobilenet_7x7),
    Case("mobilenetv2 224px blocks 12-13 (14x14)", "mobilenetv2", 1.0, 224, _mobilenet_14x14),
    Case("resnet18 224px layer4", "resnet18", 1.0, 224, _resnet_layer4),
    Case("default: mobilenetv2 w0.5 32px last 4", "mobilenetv2", 0.5, 32, _default_last4,
         realistic=False),
)


def batches(case: Case, batch: int, count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``count`` batches of Fashion-MNIST test images at the case's size (3 channels at
    224 px, bilinear upsampling; the default model's own 1-channel 32 px input)."""
    _, test = load_dataset("fashion-mnist", 32)
    images, labels = test.tensors
    out = []
    for i in range(count):
        x = images[i * batch:(i + 1) * batch]
        if case.image_size != 32:
            x = F.interpolate(x, size=case.image_size, mode="bilinear").repeat(1, 3, 1, 1)
        out.append((x, labels[i * batch:(i + 1) * batch]))
    return out


def calibrated_model(case: Case, images: torch.Tensor) -> nn.Module:
    """The case's model (seed 0) with BatchNorm statistics set to those of ``images`` (one
    train-mode forward with cumulative averaging), then frozen in eval mode."""
    torch.manual_seed(0)
    model = build_model(case.model, num_classes=CLASSES, in_channels=images.shape[1],
                        image_size=case.image_size, width=case.width)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = None
    with torch.no_grad():
        model.train()(images)
    return model.eval().requires_grad_(False)


def wrapped(base: nn.Module, case: Case, method: str, params: dict) -> tuple[nn.Module,
                                                                                nn.Module]:
    """A copy of ``base`` whose region's layers train through ``method``: (model, region)."""
    model = copy.deepcopy(base)
    region = case.region(model)
    wrap_last_layers(region, method, len(trainable_layers(region)), **params)
    return model, region


def region_input(model: nn.Module, region: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The activation entering ``region`` (that is, its first Conv2d/Linear layer: every
    case's region starts with one) when ``model`` runs on ``x``."""
    captured: list[torch.Tensor] = []
    first = trainable_layers(region)[0][1]
    hook = first.register_forward_pre_hook(lambda m, i: captured.append(i[0].detach()))
    with torch.no_grad():
        model(x)
    hook.remove()
    return captured[0]


def layer_inputs(region: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The input of every Conv2d/Linear of ``region`` when it runs on ``x``."""
    captured: dict[str, torch.Tensor] = {}
    hooks = [layer.register_forward_pre_hook(
        lambda m, i, n=name: captured.__setitem__(n, i[0].detach()))
        for name, layer in trainable_layers(region)]
    with torch.no_grad():
        region(x)
    for hook in hooks:
        hook.remove()
    return captured


METERS: dict[str, Callable[[], float]] = {  # what ``round_robin`` reads around each step
    "ms": lambda: 1e3 * time.perf_counter(),
    "cpu_ms": lambda: 1e3 * time.process_time(),
    "faults": minor_faults,
}


def round_robin(steps: dict[str, Callable[[int], None]], reps: int,
                warmup: bool = True) -> dict[str, dict]:
    """Median wall-clock and process-CPU milliseconds and minor page faults of each step,
    interleaved rep by rep, after one warm-up each (ASI's first step is its HOSVD;
    ``warmup=False`` when the layers were warmed up already). CPU time is the steadier figure
    on shared cores; the faults show what the allocator adds (see ``bench.allocator``)."""
    for step in steps.values() if warmup else ():
        step(0)
    samples: dict[str, dict[str, list[float]]] = {name: {m: [] for m in METERS} for name in steps}
    for rep in range(reps):
        for name, step in steps.items():
            start = {meter: read() for meter, read in METERS.items()}
            step(rep)
            for meter, read in METERS.items():
                samples[name][meter].append(read() - start[meter])
    return {name: {meter: statistics.median(values) for meter, values in taken.items()}
            for name, taken in samples.items()}


def with_ratios(results: dict[str, dict]) -> dict[str, dict]:
    """Adds ``<key>_ratio`` = value / vanilla's for every number of every method."""
    vanilla = results["vanilla"]
    for r in results.values():
        for key in [k for k, v in r.items() if isinstance(v, float | int) and vanilla[k]]:
            r[f"{key}_ratio"] = r[key] / vanilla[key]
    return results


def bench_case(case: Case, batch: int, region_reps: int, model_reps: int,
               ) -> tuple[dict, dict[str, torch.Tensor]]:
    """Region and model steps of every method on one case at one batch size; also returns
    the wrapped layers' inputs (for the decomposition benchmark)."""
    data = batches(case, batch, 3)
    base = calibrated_model(case, data[0][0])
    models = {name: wrapped(base, case, method, params)
              for name, (method, params) in METHODS.items()}
    x = region_input(base, case.region(base), data[0][0])
    dy = torch.randn(case.region(base)(x).shape, generator=torch.Generator().manual_seed(0))

    def region_step(region: nn.Module) -> Callable[[int], None]:
        return lambda rep: region(x).backward(dy)

    def model_step(model: nn.Module) -> Callable[[int], None]:
        def run(rep: int) -> None:
            images, labels = data[rep % len(data)]
            F.cross_entropy(model(images), labels).backward()
        return run

    region_times = round_robin({n: region_step(r) for n, (_, r) in models.items()}, region_reps)
    model_times = round_robin({n: model_step(m) for n, (m, _) in models.items()}, model_reps,
                              warmup=False)
    results = {}
    for name, (_, region) in models.items():
        region(x).backward(dy)  # the stored bytes and ranks of the region step's input
        report = measure(region, x, dy, lambda out, grad: (out * grad).sum())
        results[name] = {
            "region_ms": region_times[name]["ms"], "region_cpu_ms": region_times[name]["cpu_ms"],
            "region_faults": region_times[name]["faults"],
            "model_ms": model_times[name]["ms"], "model_cpu_ms": model_times[name]["cpu_ms"],
            "stored_bytes": compressed_bytes(region),
            "activation_bytes": report.activation_bytes, "ranks": layer_ranks(region)}
    return with_ratios(results), layer_inputs(case.region(base), x)


def bench_decomposition(x: torch.Tensor, eps: float, reps: int) -> dict:
    """Gram-route HOSVD vs full-SVD HOSVD on ``x`` (ranks compared, asserted by ``main``)."""
    def mine() -> object:
        return hosvd(x, lambda shape, ratios: eps_ranks(shape, ratios, eps), range(x.ndim))

    ours, ref = mine(), reference_hosvd(x, eps)
    times = round_robin({"gram": lambda rep: mine(),
                         "svd": lambda rep: reference_hosvd(x, eps)}, reps)
    gram, svd = times["gram"], times["svd"]
    return {"shape": list(x.shape), "eps": eps, "ranks": ours.ranks,
            "reference_ranks": ref.ranks, "gram_ms": gram["ms"], "reference_ms": svd["ms"],
            "speedup": svd["ms"] / gram["ms"], "cpu_speedup": svd["cpu_ms"] / gram["cpu_ms"]}


def step_table(title: str, results: dict[str, dict]) -> Table:
    table = Table(title=title)
    columns = ("method", "region ms", "x van", "cpu x van", "faults", "model ms", "x van ",
               "stored B", "x van  ", "measured B", "x van   ", "ranks")
    for column in columns:
        table.add_column(column, justify="left" if column in ("method", "ranks") else "right")
    for name, r in results.items():
        table.add_row(name, f"{r['region_ms']:.1f}", f"{r['region_ms_ratio']:.2f}",
                      f"{r['region_cpu_ms_ratio']:.2f}", f"{r['region_faults']:,.0f}",
                      f"{r['model_ms']:.0f}",
                      f"{r['model_ms_ratio']:.2f}", f"{r['stored_bytes']:,}",
                      f"{r['stored_bytes_ratio']:.3f}", f"{r['activation_bytes']:,}",
                      f"{r['activation_bytes_ratio']:.3f}",
                      " ".join(map(str, r["ranks"])) if any(r["ranks"]) else "")
    return table


def decomposition_table(rows: list[dict]) -> Table:
    table = Table(title="HOSVD decomposition: Gram route vs full thin SVD (identical ranks)")
    for column in ("case", "layer", "shape", "eps", "ranks", "gram ms", "svd ms", "speedup"):
        table.add_column(column, justify="left" if column in ("case", "layer") else "right")
    for r in rows:
        table.add_row(r["case"], r["layer"], "x".join(map(str, r["shape"])), str(r["eps"]),
                      str(r["ranks"]), f"{r['gram_ms']:.1f}", f"{r['reference_ms']:.1f}",
                      f"{r['speedup']:.1f}x")
    return table


def check_targets(cases: dict[str, dict[int, dict]], decomposition: list[dict]
                  ) -> dict[str, bool]:
    """PASS/FAIL per target: region ratios at the largest batch on every realistic case,
    the decomposition speed-up on every shape, identical ranks."""
    targets = {}
    for case in CASES:
        if not case.realistic or case.name not in cases:
            continue
        batch = max(cases[case.name])
        results = cases[case.name][batch]
        for method, limit in TARGETS.items():
            ratio = results[method]["region_ms_ratio"]
            targets[f"{case.name} B={batch}: {method} {ratio:.2f}x <= {limit}x"] = ratio <= limit
    slowest = min(decomposition, key=lambda r: r["speedup"])
    targets[f"decomposition >= {DECOMPOSITION_SPEEDUP}x faster on every shape: slowest "
            f"{slowest['speedup']:.1f}x ({slowest['layer']}, {slowest['shape']})"] = (
        slowest["speedup"] >= DECOMPOSITION_SPEEDUP)
    targets["identical ranks"] = all(r["ranks"] == r["reference_ranks"] for r in decomposition)
    return targets


def plot(cases: dict[str, dict[str, dict]], environment: dict, path: Path) -> None:
    """One panel per case: region-step time / vanilla's against measured activation bytes /
    vanilla's (log), a marker per method (filled: the largest batch, hollow: the others), the
    targets as dashed lines (HOSVD <= 2x, ASI <= 1x vanilla's time)."""
    figure = Figure(figsize=(14, 9), layout="constrained")
    axes = figure.subplots(2, -(-len(cases) // 2), squeeze=False).flat
    for axis, (case, by_batch) in zip(axes, cases.items(), strict=False):
        largest = max(by_batch, key=int)
        for batch, results in by_batch.items():
            for name, r in results.items():
                color = COLORS[METHODS[name][0]]
                axis.scatter(r["activation_bytes_ratio"], r["region_ms_ratio"], s=60,
                             color=color if batch == largest else "none", edgecolors=color)
                if batch == largest:
                    axis.annotate(name, (r["activation_bytes_ratio"], r["region_ms_ratio"]),
                                  xytext=(4, 4), textcoords="offset points", fontsize=7)
        for limit in sorted(set(TARGETS.values())):
            methods = ", ".join(m for m, v in TARGETS.items() if v == limit)
            axis.axhline(limit, color="grey", ls="--", lw=1)
            axis.annotate(f"target: {methods}", (0.01, limit), xycoords=("axes fraction", "data"),
                          va="bottom", fontsize=7, color="grey")
        others = ", ".join(str(b) for b in by_batch if b != largest) or "-"
        axis.set_xscale("log")
        axis.set_ylim(bottom=0)
        axis.set_title(f"{case}\nvanilla {by_batch[largest]['vanilla']['region_ms']:.0f} ms at "
                       f"batch {largest} (filled; hollow: batch {others})", fontsize=9)
        axis.set_xlabel("measured activation bytes / vanilla's (log)")
        axis.set_ylabel("region step time / vanilla's")
        axis.grid(alpha=0.3)
    load = environment["load_average_before"][0], environment["load_average_after"][0]
    figure.suptitle(f"Compressed backprop on real layer shapes: {environment['threads']} threads, "
                    f"{environment['allocator']} allocator, load {load[0]:.1f} before, "
                    f"{load[1]:.1f} after")
    figure.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="batch 64 only, few repetitions, eps 0.8 decompositions")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--case", action="append", default=[],
                        help="only cases whose name contains this text (repeatable)")
    add_option(parser)
    parser.add_argument("--out", type=Path, default=RESULTS,
                        help=f"JSON results file (default {RESULTS}; elsewhere for a run on a "
                             "busy machine); the figure is written beside it")
    parser.add_argument("--replot", action="store_true",
                        help="measure nothing: redraw the figure and reprint the targets from "
                             "--out")
    args = parser.parse_args()
    console = Console(width=160)
    figure = args.out.with_suffix(".png")
    if args.replot:
        stored = json.loads(args.out.read_text())
        plot(stored["cases"], stored["environment"], figure)
        for target, ok in stored["targets"].items():
            console.print(f"{'PASS' if ok else 'FAIL'}  {target}")
        console.print(f"wrote {figure}")
        return
    region_reps, model_reps, decomposition_reps = (3, 1, 1) if args.quick else (9, 5, 3)
    batch_sizes = (64,) if args.quick else (32, 64)
    eps_values = (0.8,) if args.quick else (0.8, 0.9)
    torch.set_num_threads(args.threads)
    use(args.allocator)
    load_before = os.getloadavg()
    console.print(f"load average before: {load_before}; allocator {args.allocator}")

    chosen = [c for c in CASES if not args.case or any(s in c.name for s in args.case)]
    cases: dict[str, dict[int, dict]] = {}
    decomposition: list[dict] = []
    for case in chosen:
        cases[case.name] = {}
        for batch in batch_sizes:
            results, inputs = bench_case(case, batch, region_reps, model_reps)
            cases[case.name][batch] = results
            console.print(step_table(f"{case.name}, batch {batch} (load {os.getloadavg()[0]:.1f})",
                                     results))
        rows = [{"case": case.name, "layer": layer,
                 **bench_decomposition(x, eps, decomposition_reps)}
                for layer, x in inputs.items() for eps in eps_values]
        console.print(decomposition_table(rows))
        decomposition += rows
    targets = check_targets(cases, decomposition)
    for target, ok in targets.items():
        console.print(f"{'PASS' if ok else 'FAIL'}  {target}")
    load_after = os.getloadavg()
    console.print(f"load average after: {load_after}")
    environment = {"torch": torch.__version__, "threads": torch.get_num_threads(),
                   "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                   "allocator": args.allocator,
                   "load_average_before": load_before, "load_average_after": load_after,
                   "region_reps": region_reps, "model_reps": model_reps, "quick": args.quick}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"environment": environment, "cases": cases,
                                    "decomposition": decomposition, "targets": targets},
                                   indent=2))
    plot(cases, environment, figure)
    console.print(f"wrote {args.out} and {figure}")
    assert targets["identical ranks"], "Gram-route and reference HOSVD ranks differ"


if __name__ == "__main__":
    main()
