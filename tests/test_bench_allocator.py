"""bench.allocator: under ``steady`` a training step stops faulting pages in (freed memory
stays with the process); under glibc's defaults the same step faults its activations in again
at every step."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench.allocator import use

ROOT = Path(__file__).resolve().parents[1]

# A MobileNetV2 14x14 block at batch 64 (29 MB activations) on one thread: the median of the
# minor page faults of steps 2-9 (glibc's heuristics make single steps vary from run to run).
STEPS = """
import statistics, sys, torch, torch.nn as nn
from bench.allocator import minor_faults, use
use(sys.argv[1])
torch.manual_seed(0)
torch.set_num_threads(1)
block = nn.Sequential(
    nn.Conv2d(96, 576, 1), nn.BatchNorm2d(576), nn.ReLU6(),
    nn.Conv2d(576, 576, 3, padding=1, groups=576), nn.BatchNorm2d(576), nn.ReLU6(),
    nn.Conv2d(576, 96, 1))
x = torch.randn(64, 96, 14, 14)
faults = []
for step in range(10):
    start = minor_faults()
    block(x).sum().backward()
    faults.append(minor_faults() - start)
print(statistics.median(faults[2:]))
"""


def steady_state_faults(allocator: str) -> float:
    out = subprocess.run([sys.executable, "-c", STEPS, allocator], capture_output=True,
                         text=True, timeout=120, check=True, cwd=ROOT)
    return float(out.stdout.split()[-1])


def test_steady_allocator_stops_the_page_faults_of_each_step():
    glibc, steady = steady_state_faults("glibc"), steady_state_faults("steady")
    assert glibc > 10_000  # measured 38,000-56,000 pages a step (150-220 MB)
    assert steady < 1_000  # measured 0


def test_unknown_allocator_names_the_option():
    with pytest.raises(ValueError, match="allocator"):
        use("jemalloc")
