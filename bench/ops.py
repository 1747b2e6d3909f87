"""Benchmark of the compressed-activation ops: `python -m bench.ops [--quick]`.

1. Training-step time and stored bytes per method, as ratios to vanilla:
   - single layers at batch 64 (3x3 conv, 3x3 depthwise, 1x1 conv, grouped 3x3 conv with
     4 groups, token Linear B x L x C): forward + backward of the layer, dX included;
   - the default model (MobileNetV2 width 0.5, 1x32x32 Fashion-MNIST) with its last 4
     Conv2d/Linear layers trainable: forward of the whole model + loss + backward.
2. The Gram-route HOSVD against the original code's HOSVD (full thin SVD of every
   unfolding) on the same activations, with identical ranks (asserted).

Inputs are real Fashion-MNIST test images (through random filters for the single layers),
so spectra decay as they do in training. Methods are timed round-robin so that load from
other processes hits them alike; medians. Prints tables, writes bench/results/ops.json.

The bench runs with 2 threads on cores shared with other processes. OpenMP's default
busy-waiting then burns time slices at every barrier (measured: small LAPACK calls 5-10x
slower, vanilla convs slower too), so OMP_WAIT_POLICY defaults to PASSIVE here; it must be
set before torch loads OpenMP, hence before the imports.
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
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

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
from common.models import build_model

RESULTS = Path(__file__).parent / "results" / "ops.json"
BATCH = 64
LAST_K = 4
METHODS: dict[str, tuple[str, dict]] = {
    "vanilla": ("vanilla", {}),
    "gradfilter R2": ("gradfilter", {"radius": 2}),
    "gradfilter R4": ("gradfilter", {"radius": 4}),
    "svd eps0.8": ("svd", {"eps": 0.8}),
    "hosvd eps0.8": ("hosvd", {"eps": 0.8}),
    "hosvd eps0.9": ("hosvd", {"eps": 0.9}),
    "asi (eps0.8 ranks)": ("asi", {"eps": 0.8}),
}
TARGETS = {"hosvd eps0.8": 2.5, "asi (eps0.8 ranks)": 1.1}  # max step time / vanilla
DECOMPOSITION_SPEEDUP = 10.0
DECOMPOSITION_EPS = (0.8, 0.9)


def images(count: int) -> torch.Tensor:
    """The first ``count`` Fashion-MNIST test images, 1 x 32 x 32, normalised."""
    _, test = load_dataset("fashion-mnist", 32)
    return test.tensors[0][:count]


def layer_cases() -> dict[str, tuple[nn.Module, torch.Tensor]]:
    """Single layers and realistic inputs: images through random 3x3 filters + ReLU."""
    gen = torch.Generator().manual_seed(0)
    pics = images(BATCH)

    def feature_maps(channels: int, side: int) -> torch.Tensor:
        filters = torch.randn(channels, 1, 3, 3, generator=gen)
        return F.relu(F.conv2d(F.interpolate(pics, size=side, mode="area"), filters, padding=1))

    tokens = F.unfold(pics[:, :, 2:30, 2:30], 4, stride=4).transpose(1, 2)  # 64 x 49 x 16
    tokens = F.gelu(tokens @ torch.randn(16, 128, generator=gen))
    return {
        "conv 3x3 32->32 @16x16": (nn.Conv2d(32, 32, 3, padding=1), feature_maps(32, 16)),
        "depthwise 3x3 96 @16x16": (nn.Conv2d(96, 96, 3, padding=1, groups=96),
                                    feature_maps(96, 16)),
        "conv 1x1 96->32 @8x8": (nn.Conv2d(96, 32, 1), feature_maps(96, 8)),
        "grouped 3x3 g4 64->64 @8x8": (nn.Conv2d(64, 64, 3, padding=1, groups=4),
                                       feature_maps(64, 8)),
        "linear 64x49x128->128": (nn.Linear(128, 128), tokens),
    }


def round_robin(steps: dict[str, Callable[[int], None]], reps: int) -> dict[str, dict]:
    """Median wall-clock and process-CPU milliseconds of each step, interleaved rep by rep
    (one warm-up each). CPU time is the steadier figure on shared cores."""
    for step in steps.values():
        step(0)
    wall: dict[str, list[float]] = {name: [] for name in steps}
    cpu: dict[str, list[float]] = {name: [] for name in steps}
    for rep in range(reps):
        for name, step in steps.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            step(rep)
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return {name: {"step_ms": 1e3 * statistics.median(wall[name]),
                   "cpu_ms": 1e3 * statistics.median(cpu[name])} for name in steps}


def method_results(models: dict[str, nn.Module], times: dict[str, dict]) -> dict[str, dict]:
    """Times, stored bytes and ranks per method, with ratios to vanilla."""
    results = {name: {**times[name], "bytes": compressed_bytes(m), "ranks": layer_ranks(m)}
               for name, m in models.items()}
    vanilla = results["vanilla"]
    for r in results.values():
        r["time_ratio"] = r["step_ms"] / vanilla["step_ms"]
        r["cpu_ratio"] = r["cpu_ms"] / vanilla["cpu_ms"]
        r["bytes_ratio"] = r["bytes"] / vanilla["bytes"]
    return results


def bench_layer(layer: nn.Module, x: torch.Tensor, reps: int) -> dict[str, dict]:
    """Forward + backward (dX included) of one wrapped layer, per method."""
    models = {
        name: wrap_last_layers(nn.Sequential(copy.deepcopy(layer)), method, 1, **params)
        for name, (method, params) in METHODS.items()
    }
    x = x.clone().requires_grad_(True)

    def step(model: nn.Module) -> Callable[[int], None]:
        return lambda rep: model(x).sum().backward()

    return method_results(models, round_robin({n: step(m) for n, m in models.items()}, reps))


def bench_model(reps: int) -> tuple[dict[str, dict], list[torch.Tensor], list[str]]:
    """Whole-model training steps (last 4 layers trainable), per method; also returns the
    inputs of the last 4 layers (for the decomposition benchmark)."""
    torch.manual_seed(0)
    base = build_model("mobilenetv2", num_classes=10, in_channels=1, image_size=32, width=0.5)
    _, test = load_dataset("fashion-mnist", 32)
    batches = [(test.tensors[0][i:i + BATCH], test.tensors[1][i:i + BATCH])
               for i in range(0, 4 * BATCH, BATCH)]
    models = {name: wrap_last_layers(copy.deepcopy(base), method, LAST_K, **params)
              for name, (method, params) in METHODS.items()}

    def step(model: nn.Module) -> Callable[[int], None]:
        def run(rep: int) -> None:
            x, y = batches[rep % len(batches)]
            F.cross_entropy(model(x), y).backward()
        return run

    results = method_results(models, round_robin({n: step(m) for n, m in models.items()}, reps))

    captured: list[torch.Tensor] = []
    layers = trainable_layers(base)[-LAST_K:]
    hooks = [layer.register_forward_hook(lambda m, i, o: captured.append(i[0].detach()))
             for _, layer in layers]
    with torch.no_grad():
        base.eval()(batches[0][0])
    for hook in hooks:
        hook.remove()
    return results, captured, [name for name, _ in layers]


def bench_decomposition(x: torch.Tensor, eps: float, reps: int) -> dict:
    """Gram-route HOSVD vs full-SVD HOSVD on ``x`` (ranks compared, asserted by ``main``)."""
    def mine() -> object:
        return hosvd(x, lambda shape, ratios: eps_ranks(shape, ratios, eps), range(x.ndim))

    ours, ref = mine(), reference_hosvd(x, eps)
    times = round_robin({"gram": lambda rep: mine(),
                         "svd": lambda rep: reference_hosvd(x, eps)}, reps)
    gram, svd = times["gram"], times["svd"]
    return {"shape": list(x.shape), "eps": eps, "ranks": ours.ranks,
            "reference_ranks": ref.ranks, "gram_ms": gram["step_ms"],
            "reference_ms": svd["step_ms"], "speedup": svd["step_ms"] / gram["step_ms"],
            "cpu_speedup": svd["cpu_ms"] / gram["cpu_ms"]}


def step_table(title: str, results: dict[str, dict]) -> Table:
    table = Table(title=title)
    for column in ("method", "step ms", "x vanilla", "cpu x vanilla", "stored bytes",
                   "x vanilla ", "ranks"):
        table.add_column(column, justify="left" if column in ("method", "ranks") else "right")
    for name, r in results.items():
        table.add_row(name, f"{r['step_ms']:.1f}", f"{r['time_ratio']:.2f}",
                      f"{r['cpu_ratio']:.2f}", f"{r['bytes']:,}", f"{r['bytes_ratio']:.4f}",
                      str(r["ranks"]) if r["ranks"][0] else "")
    return table


def decomposition_table(rows: list[dict]) -> Table:
    table = Table(title="HOSVD decomposition: Gram route vs full thin SVD (identical ranks)")
    for column in ("activation", "shape", "eps", "ranks", "gram ms", "svd ms", "speedup",
                   "cpu speedup"):
        table.add_column(column, justify="left" if column in ("activation", "ranks") else "right")
    for r in rows:
        table.add_row(r["activation"], "x".join(map(str, r["shape"])), str(r["eps"]),
                      str(r["ranks"]), f"{r['gram_ms']:.2f}", f"{r['reference_ms']:.2f}",
                      f"{r['speedup']:.1f}x", f"{r['cpu_speedup']:.1f}x")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few repetitions (smoke run)")
    args = parser.parse_args()
    model_reps, layer_reps = (3, 3) if args.quick else (21, 15)
    torch.set_num_threads(2)
    console = Console(width=140)
    load_before = os.getloadavg()[0]

    cases = layer_cases()
    layers = {case: bench_layer(layer, x, layer_reps) for case, (layer, x) in cases.items()}
    for case, results in layers.items():
        console.print(step_table(f"{case}, batch {BATCH}", results))
    model, activations, names = bench_model(model_reps)
    console.print(step_table(f"MobileNetV2 w0.5 1x32x32, batch {BATCH}, last {LAST_K} "
                             "layers trainable (whole forward + backward)", model))

    inputs = {case: x for case, (_, x) in cases.items()}
    inputs.update(zip(names, activations, strict=True))
    decomposition = [{"activation": name, **bench_decomposition(x, eps, 2 * layer_reps)}
                     for name, x in inputs.items() for eps in DECOMPOSITION_EPS]
    console.print(decomposition_table(decomposition))

    speedup = statistics.median(r["speedup"] for r in decomposition)
    by_group = {group: statistics.median(r["speedup"] for r in decomposition
                                         if (r["activation"] in names) == (group == "model"))
                for group in ("layers", "model")}
    targets = {
        **{f"{m} step <= {limit}x vanilla (model)": model[m]["time_ratio"] <= limit
           for m, limit in TARGETS.items()},
        f"decomposition >= {DECOMPOSITION_SPEEDUP}x faster: median {speedup:.1f}x (single "
        f"layers {by_group['layers']:.1f}x, model layers {by_group['model']:.1f}x)":
            speedup >= DECOMPOSITION_SPEEDUP,
        "identical ranks": all(r["ranks"] == r["reference_ranks"] for r in decomposition),
    }
    for target, ok in targets.items():
        console.print(f"{'PASS' if ok else 'FAIL'}  {target}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "environment": {"torch": torch.__version__, "threads": torch.get_num_threads(),
                        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                        "load_average_before": load_before,
                        "load_average_after": os.getloadavg()[0],
                        "model_reps": model_reps, "layer_reps": layer_reps},
        "layers": layers, "model": model, "decomposition": decomposition,
        "decomposition_median_speedup": speedup, "decomposition_median_by_group": by_group,
        "targets": targets,
    }, indent=2))
    console.print(f"wrote {RESULTS}")
    assert targets["identical ranks"], "Gram-route and reference HOSVD ranks differ"


if __name__ == "__main__":
    main()
