"""What exact HOSVD cannot skip on the bench.ops shapes, against vanilla's step:
`python -m bench.floor`.

Before it can choose a rank, HOSVD needs the spectrum of every unfolding A_(n) (I_n x J_n,
I_n J_n = |X|) of every wrapped layer's input X: ``mode_spectrum`` forms the Gram matrix of the
smaller side (order m = min(I_n, J_n); 2 m^2 max(I_n, J_n) flops, about 5/8 of that where
``gram_lower`` forms only its lower blocks) and solves its symmetric eigenproblem (LAPACK syevd on
one thread: 4/3 m^3 flops in the tridiagonal reduction alone, half of them matrix-vector, so
memory-bound). Its step also runs vanilla's forward unchanged (Y = conv(X, W) with the real X),
so whatever the rest costs (dX, the projections, the factored dW)

    HOSVD step / vanilla step  >=  (forward time + spectra time) / vanilla step time.

Measured here, medians of ``--reps`` interleaved repetitions on the caller's threads (bench.ops'
``round_robin``): vanilla's region step (forward + backward), its forward alone, and the spectra
of every mode of every wrapped layer's input. GFLOP are what torch's FlopCounterMode counts of
the products actually run: the Grams, and vanilla's forward times 3 for its step (forward, dX,
dW; an upper bound: the region's first layer computes no dX). Not its count of vanilla's
backward: torch 2.13 counts a depthwise convolution's backward ~480x too high (52 GFLOP for
0.11). Table on stdout, bench/results/floor.json.

    python -m bench.floor [--batch 64] [--reps 5] [--threads 2] [--allocator glibc|steady]
"""
# ruff: noqa: E402

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from torch.utils.flop_counter import FlopCounterMode

from bench.allocator import add_option, use
from bench.ops import (
    CASES,
    Case,
    batches,
    calibrated_model,
    layer_inputs,
    region_input,
    round_robin,
)
from common.compression import trainable_layers
from common.compression.decompose import mode_spectrum

RESULTS = Path(__file__).parent / "results" / "floor.json"


def counted_gflop(step: Callable[[], object]) -> float:
    """GFLOP of the matrix products and convolutions ``step`` runs (torch's FlopCounterMode)."""
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops() / 1e9


def bench_case(case: Case, batch: int, reps: int) -> dict:
    images = batches(case, batch, 1)[0][0]
    model = calibrated_model(case, images)
    region = case.region(model)
    x = region_input(model, region, images)
    for _, layer in trainable_layers(region):
        layer.requires_grad_(True)
    dy = torch.randn(region(x).shape, generator=torch.Generator().manual_seed(0))

    def vanilla() -> None:
        region(x).backward(dy)

    def forward() -> None:
        with torch.no_grad():
            region(x)

    steps = {"vanilla": vanilla, "forward": forward}
    layers = []
    for name, a in layer_inputs(region, x).items():
        modes = [n for n in range(a.ndim) if a.shape[n] > 1]
        if a.ndim == 2:  # hosvd decomposes a matrix's one small Gram once, for both modes
            modes = modes[:1]

        def spectra(a: torch.Tensor = a, modes: list[int] = modes) -> None:
            for n in modes:
                mode_spectrum(a, n)

        steps[name] = spectra
        layers.append({"layer": name, "shape": list(a.shape), "gram_gflop": counted_gflop(spectra),
                       "eigen_orders": [min(a.shape[n], a.numel() // a.shape[n]) for n in modes]})
    times = round_robin({name: lambda rep, step=step: step() for name, step in steps.items()},
                        reps)
    for layer in layers:
        layer["spectra_ms"] = times[layer["layer"]]["ms"]
    vanilla_ms, forward_ms = times["vanilla"]["ms"], times["forward"]["ms"]
    van_gflop = 3 * counted_gflop(forward)  # see the module docstring
    spectra_ms = sum(layer["spectra_ms"] for layer in layers)
    gram_gflop = sum(layer["gram_gflop"] for layer in layers)
    return {"case": case.name, "batch": batch, "vanilla_ms": vanilla_ms,
            "forward_ms": forward_ms,
            "vanilla_gflop": van_gflop, "gram_gflop": gram_gflop,
            "gram_flop_ratio": gram_gflop / van_gflop, "spectra_ms": spectra_ms,
            "spectra_ratio": spectra_ms / vanilla_ms,
            "hosvd_ratio_floor": (forward_ms + spectra_ms) / vanilla_ms, "layers": layers}


def table(rows: list[dict]) -> Table:
    out = Table(title="Exact HOSVD's unavoidable work (every mode's Gram + eigh) vs vanilla")
    for column in ("case", "vanilla GFLOP", "Gram GFLOP", "Gram / van", "eigenproblem orders",
                   "vanilla ms", "forward ms", "spectra ms", "spectra / van", "HOSVD >= x van"):
        out.add_column(column, justify="left" if column in ("case", "eigenproblem orders")
                       else "right")
    for r in rows:
        orders = " ".join(str(max(layer["eigen_orders"])) for layer in r["layers"])
        out.add_row(r["case"], f"{r['vanilla_gflop']:.1f}", f"{r['gram_gflop']:.1f}",
                    f"{r['gram_flop_ratio']:.2f}", orders, f"{r['vanilla_ms']:.1f}",
                    f"{r['forward_ms']:.1f}", f"{r['spectra_ms']:.1f}", f"{r['spectra_ratio']:.2f}",
                    f"{r['hosvd_ratio_floor']:.2f}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    add_option(parser)
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"JSON (default {RESULTS})")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    use(args.allocator)
    load_before = os.getloadavg()
    rows = [bench_case(case, args.batch, args.reps) for case in CASES]
    console = Console(width=160)
    console.print(table(rows))
    load = {"before": load_before, "after": os.getloadavg()}
    console.print(f"load average before {load['before'][0]:.2f}, after {load['after'][0]:.2f}; "
                  f"largest eigenproblem order per layer")
    args.out.write_text(json.dumps({"threads": args.threads, "allocator": args.allocator,
                                    "load_average": load, "cases": rows}, indent=1))
    console.print(f"-> {args.out}")


if __name__ == "__main__":
    main()
