"""What checking ``compression.last_k`` costs: `python -m bench.layer_count`.

``common.validate.layer_count`` builds the experiment's model (on the CPU, outside torch's
global RNG) to count its Conv2d/Linear layers, once per (model, width, image size, dataset),
then answers from a cache. Measured here, in a fresh process each time so that nothing is
warm: importing torch + the model zoo (paid once by the CLI or the dashboard process), the
first count of each configuration (a model build) and a cached count. Configurations: every
model at the quickstart's size (width 0.5, 32 px, Fashion-MNIST) and at the schema's largest
(width 2.0, 224 px, CIFAR-100). Prints a table, writes bench/results/layer_count.json with the
load average before and after (the machine is shared: timings there are upper bounds).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from common.models import MODEL_NAMES

RESULTS = Path(__file__).with_name("results") / "layer_count.json"
SIZES = (("quickstart", 0.5, 32, "fashion-mnist"), ("largest", 2.0, 224, "cifar100"))
PROBE = """
import json, os, sys, time
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
t0 = time.perf_counter()
from common.validate import layer_count
import torch, common.models, common.compression, common.data
t1 = time.perf_counter()
count = layer_count(*json.loads(sys.argv[1]))
t2 = time.perf_counter()
layer_count(*json.loads(sys.argv[1]))
t3 = time.perf_counter()
print(json.dumps({"count": count, "import_s": t1 - t0, "first_s": t2 - t1, "cached_s": t3 - t2}))
"""


def probe(model: str, width: float, image_size: int, dataset: str) -> dict:
    """One fresh process: import time, first (building) and cached count."""
    args = json.dumps([model, width, image_size, dataset])
    done = subprocess.run([sys.executable, "-c", PROBE, args], capture_output=True, text=True,
                          check=True, timeout=300, cwd=Path(__file__).resolve().parents[1])
    return json.loads(done.stdout.splitlines()[-1])


def main() -> None:
    load_before = os.getloadavg()
    rows = [{"model": model, "size": size, "width": width, "image_size": image_size,
             "dataset": dataset, **probe(model, width, image_size, dataset)}
            for model in MODEL_NAMES for size, width, image_size, dataset in SIZES]
    load_after = os.getloadavg()
    table = Table(title="layer_count: what checking compression.last_k costs")
    for column in ("model", "size", "layers", "import torch+models", "first count (build)",
                   "cached count"):
        table.add_column(column)
    for r in rows:
        table.add_row(r["model"], r["size"], str(r["count"]), f"{r['import_s'] * 1e3:.0f} ms",
                      f"{r['first_s'] * 1e3:.1f} ms", f"{r['cached_s'] * 1e6:.1f} us")
    console = Console()
    console.print(table)
    console.print(f"load average (1/5/15 min) before {load_before}, after {load_after}")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"rows": rows, "load_average_before": load_before,
                                   "load_average_after": load_after}, indent=2))


if __name__ == "__main__":
    main()
