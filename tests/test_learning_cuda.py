"""The executors on a GPU (``training.device: cuda``) give the CPU reference's updates.

Every test here skips, with the reason, on a machine without a CUDA device; run them
where there is one with ``bench/gpu_check.sh`` (with the learning bench on CUDA).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fedsim.learning.batched import BatchedExecutor
from fedsim.learning.executors import SequentialExecutor
from tests.test_learning_executors import CFG, MIXED, SPARSE, _assert_same, _jobs

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: torch.cuda.is_available() is False")


def _on(tc_name: str, device: str) -> list:
    tc = dataclasses.replace(MIXED[tc_name] if tc_name in MIXED else SPARSE[tc_name], device=device)
    return _jobs(tc) if tc_name in MIXED else _jobs(tc, cfg=dataclasses.replace(CFG, top_k=1))


@pytest.mark.parametrize("executor", ["sequential", "batched"])
@pytest.mark.parametrize("name", list(MIXED) + list(SPARSE))
def test_cuda_executor_equals_the_cpu_reference(name: str, executor: str) -> None:
    # Prepare: the mixed round of the executor tests, once on the CPU, once on the GPU
    ref = SequentialExecutor().run(_on(name, "cpu"))
    # Execute
    got = (SequentialExecutor() if executor == "sequential" else BatchedExecutor()).run(_on(name, "cuda"))
    # Check: the updates come back on the CPU, equal within float tolerance (GPU kernels round
    # differently; Adam amplifies it, as in the CPU batched test)
    assert all(t.device.type == "cpu" for u in got for t in u.state.values())
    _assert_same(ref, got, atol=1e-4 if "adam" in name else 2e-5)
