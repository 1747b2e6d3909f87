"""How a benchmark's process gets its memory from glibc: it moves step times by up to 2.7x.

glibc's malloc serves a large block by ``mmap`` (from 128 KiB, a threshold it raises, up to
32 MiB, to the size of each such block freed) and hands the free top of its heap back to the
kernel (above twice that threshold). A training step that holds hundreds of MB of activations
until its backward thus takes fresh pages from the kernel again and again, each 4 KiB page a
minor page fault and a zero fill (about 1.6 us). Measured on the MobileNetV2 14x14 region at
batch 64 (``bench.ops --quick``, load 1.0-1.6), per step, vanilla / HOSVD eps 0.8 / ASI rank 8:
glibc's defaults 444 / 876 / 531 ms with 176,000 / 162,000 / 113,000 faults; ``steady``
162 / 562 / 259 ms with 14,000 / 3 / 0 faults. One method alone in its process, as in a client,
under the defaults: 358 / 831 / 499 ms with 106,000 / 56,000 / 62,000 faults. The faults add
about the same time to every method of an interleaved run, which pulls the ratios to vanilla
towards 1; ``steady`` measures the compute alone.

Allocators:
- ``glibc``: the defaults, what edgefed's clients run with (and an edge device's Linux).
- ``steady``: ``mallopt`` M_MMAP_THRESHOLD 32 MiB (blocks up to 32 MiB come from the heap, the
  threshold no longer moves), M_TRIM_THRESHOLD 2 GiB - 1 (freed heap memory stays with the
  process), M_TOP_PAD 256 MiB (the heap grows in large steps): after the first steps a step
  faults almost no pages in, so its time is the compute alone.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import resource

ALLOCATORS = ("glibc", "steady")
# mallopt parameters (malloc.h) and the values of ``steady``
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
STEADY = {M_MMAP_THRESHOLD: 32 << 20, M_TRIM_THRESHOLD: (1 << 31) - 1, M_TOP_PAD: 256 << 20}


def add_option(parser: argparse.ArgumentParser) -> None:
    """The ``--allocator`` option of a benchmark's command line (default ``steady``: the
    compute alone, like for like)."""
    parser.add_argument("--allocator", choices=ALLOCATORS, default="steady",
                        help="steady (default): no page faults a step, the compute alone; "
                             "glibc: malloc's defaults, as edgefed's clients run (see "
                             "bench.allocator)")


def use(allocator: str) -> None:
    """Set this process's malloc to ``allocator`` (one of ``ALLOCATORS``; ``glibc`` changes
    nothing). Raises RuntimeError where glibc's ``mallopt`` refuses a value or is missing."""
    if allocator not in ALLOCATORS:
        raise ValueError(f"allocator: {allocator!r} is not one of {ALLOCATORS}")
    if allocator == "glibc":
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    for parameter, value in STEADY.items():
        if libc.mallopt(parameter, value) != 1:
            raise RuntimeError(f"allocator: mallopt({parameter}, {value}) refused (not glibc?)")


def minor_faults() -> int:
    """Minor page faults of this process so far (pages the kernel mapped in and zeroed)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
