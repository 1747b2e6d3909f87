"""bench.fleet's bookkeeping: the run order, the steady-state mean, the ratio within each pair
and the process-tree CPU sampler (a child that burns CPU and exits still counts)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from bench.fleet import TreeSampler, pair_ratios, schedule, steady

BURN = "import time\nend = time.process_time() + 0.4\nwhile time.process_time() < end: pass\n"


def test_runs_alternate_so_each_system_goes_first_in_half_the_pairs() -> None:
    assert schedule(1) == ["edgefed", "plain"]
    assert schedule(3) == ["edgefed", "plain", "plain", "edgefed", "edgefed", "plain"]


def test_steady_state_pools_rounds_after_the_first_of_every_run() -> None:
    runs = [{"round_s": [9.0, 2.0, 4.0]}, {"round_s": [7.0, 6.0]}]
    assert steady(runs, "round_s") == pytest.approx(4.0)
    with pytest.raises(ValueError, match="rounds: need at least 2"):
        steady([{"round_s": [9.0]}], "round_s")


def test_each_pair_is_edgefed_over_plain_whichever_ran_first() -> None:
    runs = list(zip(schedule(2), [{"round_s": [9.0, 3.0]}, {"round_s": [9.0, 2.0]},
                                  {"round_s": [9.0, 4.0]}, {"round_s": [9.0, 5.0]}],
                    strict=True))  # edgefed 3, plain 2; then plain 4, edgefed 5
    assert pair_ratios(runs) == pytest.approx([1.5, 1.25])


def test_sampler_keeps_the_cpu_of_a_child_that_exited() -> None:
    with TreeSampler(os.getpid) as sampler:
        time.sleep(0.3)
        before = time.time()
        subprocess.run([sys.executable, "-c", BURN + "time.sleep(0.6)\n"], check=True, timeout=60)
        time.sleep(0.3)
        after = time.time()
    burned = sampler.cpu_at(after) - sampler.cpu_at(before)
    assert burned >= 0.3  # the child's 0.4 s, minus what the last sample before its exit missed
    assert sampler.cpu_at(before) <= sampler.cpu_at((before + after) / 2) <= sampler.cpu_at(after)
    assert sampler.peak > 0 and sampler.loads
