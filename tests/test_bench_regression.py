"""bench.regression loads a commit's compression package beside the working tree's: HEAD's
package trains the default model's last layers to the same gradients as the current one."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.ops import batches
from bench.regression import ABSOLUTE_IMPORT, DEFAULT, baseline_package, default_model
from common.compression import wrap_last_layers


def test_head_package_gives_the_working_tree_gradients(tmp_path: Path) -> None:
    baseline = baseline_package("HEAD", tmp_path)
    assert baseline.__file__.startswith(str(tmp_path))
    images, labels = batches(DEFAULT, 8, 1)[0]
    base = default_model("raw", images)
    grads = []
    for wrap in (baseline.wrap_last_layers, wrap_last_layers):
        model = wrap(copy.deepcopy(base), "hosvd", 4, eps=0.8)
        F.cross_entropy(model(images), labels).backward()
        grads.append([p.grad for p in model.parameters() if p.requires_grad])
    assert len(grads[0]) == len(grads[1]) > 0
    for old, new in zip(*grads, strict=True):
        torch.testing.assert_close(old, new, rtol=1e-4, atol=1e-6)


def test_only_packages_of_relative_imports_are_loaded() -> None:
    assert ABSOLUTE_IMPORT.search("import torch\nfrom common.config import ExperimentConfig\n")
    assert ABSOLUTE_IMPORT.search("    import common.compression\n")
    assert not ABSOLUTE_IMPORT.search('"""see ``common.compression.registry``"""\nfrom . import x')
