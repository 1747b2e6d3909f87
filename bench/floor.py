"""What exact HOSVD cannot skip on the bench.ops shapes, against vanilla's step:
`python -m bench.floor`.

Before it can choose a rank, HOSVD needs the spectrum of every unfolding A_(n) (I_n x J_n,
I_n J_n = |X|) of every wrapped layer's input X: ``mode_spectrum`` forms the Gram matrix of the
smaller side (order m = min(I_n, J_n)) and solves its symmetric eigenproblem (LAPACK syevd, one
thread). In flops, per mode,

    Gram:  2 m^2 max(I_n, J_n) (b + 1) / 2b   (b lower blocks of ``gram_lower``; the slice-wise
                                              route of ``mode_gram`` forms the whole product, b=1)
    eigh:  4/3 m^3 of it in the tridiagonal reduction, half of those matrix-vector (memory-bound)

and vanilla's step of a Conv2d (Linear alike) is forward + dX + dW = 3 x 2 |Y| (C_in/G) k_h k_w.
The compressed step still runs vanilla's forward and dX, so with dW about a third of vanilla's
step (its share of the flops for dense convolutions; less for depthwise ones)

    HOSVD step / vanilla step  >=  2/3 + (spectra time) / (vanilla step time)

whatever the projections and the factored dW cost. This measures both times (vanilla: the
region step on the caller's threads, median, as bench.ops; spectra: every mode of every wrapped
layer's input, median) and prints the bound; results in bench/results/floor.json.

    python -m bench.floor [--batch 64] [--reps 5] [--threads 2]
"""
# ruff: noqa: E402

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from bench.ops import CASES, Case, batches, calibrated_model, layer_inputs, region_input
from common.compression import trainable_layers
from common.compression.decompose import (
    GRAM_BLOCK_ROWS,
    GRAM_MAX_BLOCKS,
    SLICE_GRAM_MIN_SIDE,
    mode_spectrum,
)

RESULTS = Path(__file__).parent / "results" / "floor.json"


def median_ms(step: Callable[[], object], reps: int) -> float:
    step()  # warm-up
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def gram_flops(shape: torch.Size, n: int) -> float:
    """Flops of the Gram matrix ``mode_spectrum`` forms for mode ``n`` (see the module doc)."""
    size, numel = shape[n], shape.numel()
    other = numel // size
    m, big = min(size, other), max(size, other)
    trail = numel // shape[: n + 1].numel()
    whole = (size <= other and 0 < n < len(shape) - 1
             and min(size, trail) >= SLICE_GRAM_MIN_SIDE and size < 2 * GRAM_BLOCK_ROWS)
    blocks = 1 if whole else max(1, min(GRAM_MAX_BLOCKS, m // GRAM_BLOCK_ROWS))
    return 2 * m * m * big * (blocks + 1) / (2 * blocks)


def vanilla_flops(region: nn.Module, x: torch.Tensor) -> float:
    """Forward + dX + dW flops of the region's Conv2d/Linear layers: 3 x 2 |Y| fan-in."""
    total = 0.0

    def count(module: nn.Module, _: tuple, y: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            fan_in = module.in_channels // module.groups * module.kernel_size[0] * \
                module.kernel_size[1]
        else:
            fan_in = module.in_features
        total += 3 * 2 * y.numel() * fan_in

    hooks = [layer.register_forward_hook(count) for _, layer in trainable_layers(region)]
    with torch.no_grad():
        region(x)
    for hook in hooks:
        hook.remove()
    return total


def bench_case(case: Case, batch: int, reps: int) -> dict:
    images = batches(case, batch, 1)[0][0]
    model = calibrated_model(case, images)
    region = case.region(model)
    x = region_input(model, region, images)
    for _, layer in trainable_layers(region):
        layer.requires_grad_(True)
    dy = torch.randn(region(x).shape, generator=torch.Generator().manual_seed(0))
    vanilla_ms = median_ms(lambda: region(x).backward(dy), reps)
    layers = []
    for name, a in layer_inputs(region, x).items():
        modes = [n for n in range(a.ndim) if a.shape[n] > 1]
        spectra_ms = median_ms(lambda a=a, modes=modes: [mode_spectrum(a, n) for n in modes],
                               reps)
        layers.append({
            "layer": name, "shape": list(a.shape), "spectra_ms": spectra_ms,
            "eigen_orders": [min(a.shape[n], a.numel() // a.shape[n]) for n in modes],
            "gram_gflop": sum(gram_flops(a.shape, n) for n in modes) / 1e9,
        })
    spectra_ms = sum(layer["spectra_ms"] for layer in layers)
    van_gflop = vanilla_flops(region, x) / 1e9
    gram_gflop = sum(layer["gram_gflop"] for layer in layers)
    return {"case": case.name, "batch": batch, "vanilla_ms": vanilla_ms,
            "vanilla_gflop": van_gflop, "gram_gflop": gram_gflop,
            "gram_flop_ratio": gram_gflop / van_gflop, "spectra_ms": spectra_ms,
            "spectra_ratio": spectra_ms / vanilla_ms,
            "hosvd_ratio_floor": 2 / 3 + spectra_ms / vanilla_ms, "layers": layers}


def table(rows: list[dict]) -> Table:
    out = Table(title="Exact HOSVD's unavoidable work (every mode's Gram + eigh) vs vanilla")
    for column in ("case", "vanilla GFLOP", "Gram GFLOP", "x van", "eigenproblem orders",
                   "vanilla ms", "spectra ms", "x van ", "HOSVD >= x van"):
        out.add_column(column, justify="left" if column in ("case", "eigenproblem orders")
                       else "right")
    for r in rows:
        orders = " ".join(str(max(layer["eigen_orders"])) for layer in r["layers"])
        out.add_row(r["case"], f"{r['vanilla_gflop']:.1f}", f"{r['gram_gflop']:.1f}",
                    f"{r['gram_flop_ratio']:.2f}", orders, f"{r['vanilla_ms']:.1f}",
                    f"{r['spectra_ms']:.1f}", f"{r['spectra_ratio']:.2f}",
                    f"{r['hosvd_ratio_floor']:.2f}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    rows = [bench_case(case, args.batch, args.reps) for case in CASES]
    console = Console(width=160)
    console.print(table(rows))
    load = {"before": load_before, "after": os.getloadavg()}
    console.print(f"load average before {load['before'][0]:.2f}, after {load['after'][0]:.2f}; "
                  f"largest eigenproblem order per layer")
    RESULTS.write_text(json.dumps({"threads": args.threads, "load_average": load,
                                   "cases": rows}, indent=1))
    console.print(f"-> {RESULTS}")


if __name__ == "__main__":
    main()
