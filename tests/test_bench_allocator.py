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

# A MobileNetV2 14x14 block at batch 64 (29 MB activations), one thread (the same sequence of
# allocations every run): the minor page faults of steps 4-7 together.
STEPS = """
import sys, torch, torch.nn as nn
from bench.allocator import minor_faults, use
use(sys.argv[1])
torch.manual_seed(0)
torch.set_num_threads(1)
block = nn.Sequential(
    nn.Conv2d(96, 576, 1), nn.BatchNorm2d(576), nn.ReLU6(),
    nn.Conv2d(576, 576, 3, padding=1, groups=576), nn.BatchNorm2d(576), nn.ReLU6(),
    nn.Conv2d(576, 96, 1))
x = torch.randn(64, 96, 14, 14)
for step in range(8):
    if step == 4:
        start = minor_faults()
    block(x).sum().backward()
print(minor_faults() - start)
"""


def steady_state_faults(allocator: str) -> int:
    out = subprocess.run([sys.executable, "-c", STEPS, allocator], capture_output=True,
                         text=True, timeout=120, check=True, cwd=ROOT)
    return int(out.stdout.split()[-1])


def test_steady_allocator_stops_the_page_faults_of_each_step():
    glibc, steady = steady_state_faults("glibc"), steady_state_faults("steady")
    assert glibc > 100_000  # measured 242,000: about 240 MB faulted in over four steps
    assert steady < glibc / 10  # measured 7,000


def test_unknown_allocator_names_the_option():
    with pytest.raises(ValueError, match="allocator"):
        use("jemalloc")
