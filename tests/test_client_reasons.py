"""Client failure reasons are one readable line: the error's type and message, no ANSI colour
codes, no file paths, no traceback.

``data/simulation-client-error.txt`` is a real reason as Flower 1.42's Simulation Engine sent it
for a ClientApp that raised ``ValueError`` (Ray's chained, coloured traceback inside Flower's
``<class 'T'>:<'str(ex)'>``), taken from a run of ``edgefed run`` with ``last_k: 60`` on
smallcnn; the events of that run cut it at 2,000 characters, before the error's own line.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from common.reasons import MAX_REASON, readable_reason

SIMULATION_REASON = (Path(__file__).parent / "data" / "simulation-client-error.txt").read_text()


def test_a_ray_traceback_becomes_the_errors_own_line() -> None:
    assert "\x1b[36m" in SIMULATION_REASON and len(SIMULATION_REASON) > 2000
    assert readable_reason(SIMULATION_REASON) == (
        "ValueError: last_k=60 must be an int between 1 and 5 (the number of Conv2d/Linear "
        "layers)")


@pytest.mark.parametrize(("reason", "readable"), [
    # the Deployment Engine's ClientApp runtime: str(type(ex)):<'str(ex)'>
    ("<class 'ValueError'>:<'last_k=60 must be an int'>", "ValueError: last_k=60 must be an int"),
    ("<class 'FileNotFoundError'>:<'[Errno 2] No such file or directory: "
     "'/root/.cache/edgefed/partitions/p-3.npz''>",
     "FileNotFoundError: [Errno 2] No such file or directory: 'p-3.npz'"),
    # Flower's wrapper without a traceback: the message it wraps
    ("<class 'flwr.clientapp.client_app.ClientAppException'>:<'\nException ClientAppException "
     "occurred. Message: boom'>", "ClientAppException: boom"),
    # sentences edgefed and Flower write stay as they are
    ("ClientApp stopped responding.", "ClientApp stopped responding."),
    ("out of memory: needs 5,000 bytes, budget 3,000", "out of memory: needs 5,000 bytes, "
     "budget 3,000"),
    ("\x1b[91mERROR\x1b[0m: lost\n  the link", "ERROR: lost the link"),
])
def test_reasons_become_one_plain_line(reason: str, readable: str) -> None:
    assert readable_reason(reason) == readable


def test_a_long_reason_is_capped() -> None:
    line = readable_reason("<class 'RuntimeError'>:<'" + "x" * 5000 + "'>")
    assert len(line) == MAX_REASON and line.startswith("RuntimeError: xxx") and line[-1] == "…"
