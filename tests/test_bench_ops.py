"""bench.ops' verdicts and figure from stored results: each target is judged at the largest batch
of every realistic case (the default model is not held to them), the decomposition by its
slowest shape, and ``--replot`` draws the figure from the JSON alone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench.ops import CASES, METHODS, TARGETS, check_targets, plot

ROOT = Path(__file__).resolve().parents[1]
REALISTIC, DEFAULT = CASES[0].name, CASES[-1].name


def results(ratio: dict[str, float]) -> dict[str, dict]:
    """A batch's results: every method at ``ratio[name]`` of vanilla's time (1.0 if absent)."""
    return {name: {"region_ms": 100.0 * ratio.get(name, 1.0),
                   "region_ms_ratio": ratio.get(name, 1.0),
                   "activation_bytes_ratio": 1.0 if name == "vanilla" else 0.1}
            for name in METHODS}


def decomposition(*speedups: float) -> list[dict]:
    return [{"layer": f"l{i}", "shape": [64, 8, 7, 7], "speedup": s, "ranks": [1, 2, 3, 3],
             "reference_ranks": [1, 2, 3, 3]} for i, s in enumerate(speedups)]


def test_targets_are_judged_at_the_largest_batch_of_realistic_cases_only():
    cases = {
        REALISTIC: {"32": results({"hosvd eps0.8": 9.0}),  # a smaller batch does not count
                    "64": results({"hosvd eps0.8": 2.5, "asi eps0.8 ranks": 0.9,
                                   "asi rank 8": 1.0})},
        DEFAULT: {"64": results({"hosvd eps0.8": 9.0, "asi rank 8": 9.0})},
    }
    targets = check_targets(cases, decomposition(12.0, 9.5))
    judged = {key: ok for key, ok in targets.items() if key.startswith(REALISTIC)}
    assert [key.split(": ")[1].rsplit(" ", 3)[0] for key in judged] == list(TARGETS)
    assert all("B=64" in key for key in judged)
    assert list(judged.values()) == [False, True, True]  # 2.5 > 2.0; 0.9 and 1.0 <= 1.0
    assert not any(key.startswith(DEFAULT) for key in targets)
    slowest = next(key for key in targets if key.startswith("decomposition"))
    assert "9.5x" in slowest and targets[slowest] is False
    assert targets["identical ranks"] is True


def test_a_measuring_run_plots_its_int_batch_keys(tmp_path):
    environment = {"threads": 2, "allocator": "steady", "load_average_before": [0.5, 0.5, 0.5],
                   "load_average_after": [1.0, 1.0, 1.0]}
    plot({REALISTIC: {32: results({}), 64: results({})}}, environment, tmp_path / "ops.png")
    assert (tmp_path / "ops.png").stat().st_size > 20_000


def test_replot_draws_the_figure_from_the_json_alone(tmp_path):
    stored = {"environment": {"threads": 2, "allocator": "steady",
                              "load_average_before": [0.5, 0.5, 0.5],
                              "load_average_after": [1.0, 1.0, 1.0]},
              "cases": {REALISTIC: {"32": results({}), "64": results({"hosvd eps0.8": 2.5})},
                        DEFAULT: {"64": results({})}},
              "targets": {"identical ranks": True}}
    out = tmp_path / "ops.json"
    out.write_text(json.dumps(stored))
    done = subprocess.run([sys.executable, "-m", "bench.ops", "--replot", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "PASS  identical ranks" in done.stdout
    figure = tmp_path / "ops.png"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and figure.stat().st_size > 20_000
