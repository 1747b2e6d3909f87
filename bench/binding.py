"""At which workload sizes do the real boards' training-memory budgets bind?

The catalogue's budgets (``deploy/devices.yaml``) are scaled down so that the small default
workload feels memory pressure; each profile also carries ``board_budget_bytes``, an estimate of
what the real board could give to training. This bench measures, with
``common.memory.measure`` (vanilla backprop, SGD with momentum), the training memory of
MobileNetV2 on 1-channel images for a grid of image sizes, widths and trainable depths, at two
batch sizes b1 < b2, and splits it into a per-sample part and a fixed part,

    training(b) = a * b + c,   a = (t(b2) - t(b1)) / (b2 - b1),   c = t(b1) - a * b1,

(activations kept for backward grow with the batch; gradients and momentum do not). From that,
for each board, the largest batch that fits: floor((board budget - c) / a); a workload whose
batch exceeds it is one at which the real board's budget binds. ``linearity`` is t(b3)
predicted from (a, c) against measured at a third batch b3 (1.0 = exact).

    python -m bench.binding [--sizes 32 128 224] [--widths 0.5 1.0] [--threads N]

Prints a table and writes ``bench/results/binding.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from common.compression import trainable_layers, wrap_last_layers
from common.devices import load_catalogue
from common.memory import format_bytes, measure
from common.models import build_model
from common.train import batchnorm_eval, sgd

RESULTS = Path(__file__).resolve().parent / "results"
BATCHES = (2, 4, 8)


@dataclass(frozen=True)
class Row:
    """One workload: per-sample and fixed training bytes and, per board, the largest batch."""

    image_size: int
    width: float
    last_k: str
    per_sample_bytes: float
    fixed_bytes: float
    linearity: float
    max_batch: dict[str, int]


def training_bytes(image_size: int, width: float, last_k: str, batch: int) -> int:
    """Measured training memory (kept activations + gradients + momentum) of one vanilla step."""
    torch.manual_seed(0)
    model = build_model("mobilenetv2", 10, 1, image_size, width)
    k = len(trainable_layers(model)) if last_k == "all" else int(last_k)
    model = batchnorm_eval(wrap_last_layers(model, "vanilla", k))
    inputs = torch.randn(batch, 1, image_size, image_size)
    targets = torch.zeros(batch, dtype=torch.int64)
    optimizer = sgd([p for p in model.parameters() if p.requires_grad], 0.0)
    return measure(model, inputs, targets, nn.CrossEntropyLoss(), optimizer).training_bytes


def workload(image_size: int, width: float, last_k: str, boards: dict[str, int]) -> Row:
    b1, b2, b3 = BATCHES
    t1, t2, t3 = (training_bytes(image_size, width, last_k, b) for b in (b1, b2, b3))
    per_sample = (t2 - t1) / (b2 - b1)
    fixed = t1 - per_sample * b1
    return Row(image_size, width, last_k, per_sample, fixed, (per_sample * b3 + fixed) / t3,
               {name: max(0, int((budget - fixed) // per_sample))
                for name, budget in boards.items()})


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=[32, 128, 224])
    parser.add_argument("--widths", nargs="+", type=float, default=[0.5, 1.0])
    parser.add_argument("--last-k", nargs="+", default=["4", "all"])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=RESULTS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[Row]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    boards = {p.name: p.board_budget_bytes for p in load_catalogue().profiles.values()
              if p.board_budget_bytes is not None and p.name != "pi-starved"}
    rows = [workload(size, width, k, boards)
            for k in args.last_k for width in args.widths for size in args.sizes]
    names = list(boards)
    print("vanilla MobileNetV2, SGD momentum: training bytes = per-sample x batch + fixed; "
          "largest batch that fits each board's estimated training memory")
    print(f"{'last k':>6} {'width':>5} {'px':>4} {'per sample':>11} {'fixed':>10} "
          f"{'lin.':>5} " + " ".join(f"{n:>11}" for n in names))
    print(" " * 45 + " ".join(f"{format_bytes(boards[n]):>11}" for n in names))
    for r in rows:
        print(f"{r.last_k:>6} {r.width:>5} {r.image_size:>4} "
              f"{format_bytes(r.per_sample_bytes):>11} {format_bytes(r.fixed_bytes):>10} "
              f"{r.linearity:5.2f} " + " ".join(f"{r.max_batch[n]:>11}" for n in names))
    seconds = time.perf_counter() - started
    record = {"boards": boards, "batches": BATCHES, "seconds": seconds,
              "load_average": list(os.getloadavg()), "rows": [asdict(r) for r in rows]}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "binding.json").write_text(json.dumps(record, indent=1))
    print(f"wrote {args.out / 'binding.json'} in {seconds:.0f} s")
    return rows


if __name__ == "__main__":
    main()
