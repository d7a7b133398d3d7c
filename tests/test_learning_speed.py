"""A run computes only what it reads, and starts up with only what it uses (issue 32)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import fedsim
from fedsim.learning import training
from fedsim.learning.batched import BatchedExecutor

REPO = Path(__file__).resolve().parents[1]
DEFAULT = REPO / "scenarios" / "smart-city-small.yaml"
TINY = [
    "run.rounds=2",
    "data.max_train_samples=200",
    "evaluation.max_test_samples=50",
    "topology.grid.clients={phone: 3, vehicle: 2, sensor: 1}",
    "training.device=cpu",
]


def _count_feedback_passes(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Wrap both executors' expert-loss passes and the batched executor's row passes in call counters."""
    calls = {"expert_loss": 0, "gate": 0}

    def counted(key: str, fn: Any) -> Any:
        def wrapper(*a: Any, **kw: Any) -> Any:
            calls[key] += 1
            return fn(*a, **kw)

        return wrapper

    monkeypatch.setattr(training, "_expert_losses", counted("expert_loss", training._expert_losses))
    from fedsim.learning import batched

    # the batched executor's own stacked passes (its expert losses, and its row passes: gate and expert losses)
    monkeypatch.setattr(BatchedExecutor, "_expert_losses", staticmethod(counted("expert_loss", BatchedExecutor._expert_losses)))
    monkeypatch.setattr(batched, "_row_means", counted("gate", batched._row_means))
    return calls


@pytest.mark.parametrize("executor", ["sequential", "batched"])
@pytest.mark.parametrize("reward", ["gate_prob", "loss", "expert_loss"])
def test_the_feedback_passes_run_only_when_the_reward_reads_them(
    executor: str, reward: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _count_feedback_passes(monkeypatch)
    res = fedsim.run(
        fedsim.load_scenario(DEFAULT, [*TINY, f"training.executor={executor}", f"protocol.fedmoe.alignment.reward={reward}"]),
        tmp_path / "run", figures=False,
    )
    assert res.rounds["accuracy"].notna().all()
    agg = res.frames["events"].query("kind == 'aggregate'")
    assert (agg["updates"] > 0).all() and (agg["rejected"] == 0).all()  # a skipped pass is not a broken update
    # the per-expert-loss pass: only for the expert_loss reward (sequential: one per job; batched: one per cohort)
    assert (calls["expert_loss"] > 0) == (reward == "expert_loss"), calls
    if executor == "batched":  # its gate pass (routing is dense there, so any _row_means call beyond the expert losses is it)
        assert (calls["gate"] > calls["expert_loss"]) == (reward == "gate_prob"), calls


def test_personalised_accuracy_with_masks_pools_clients_that_share_a_mask() -> None:
    import numpy as np
    import torch

    from fedsim.learning.metrics import personalised_accuracy
    from fedsim.learning.models import MoEConfig
    from fedsim.learning.partition import ClientSplit
    from fedsim.learning.training import build_model

    cfg = MoEConfig(input_shape=(6,), num_classes=3, widths=(8,), feature_dim=8, num_experts=3, top_k=2)
    model = build_model(cfg, seed=1)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(90, 6, generator=gen), torch.arange(90) % 3
    splits = [ClientSplit(i, np.arange(0), np.arange(10 * i, 10 * i + 3 + i)) for i in range(6)]
    splits[4] = ClientSplit(4, np.arange(0), np.arange(0))  # no test split: NaN
    masks = [torch.tensor(m) for m in ([1, 1, 0], [0, 1, 1], [1, 1, 0], [1, 0, 1], [0, 1, 1], [1, 1, 0])]
    pooled = personalised_accuracy(model, x, y, splits, expert_masks=masks)
    one_by_one = personalised_accuracy([model] * 6, x, y, splits, expert_masks=masks)  # a model per client: per-client passes
    assert np.array_equal(np.isnan(pooled), np.isnan(one_by_one)) and np.isnan(pooled[4])
    assert np.array_equal(pooled[~np.isnan(pooled)], one_by_one[~np.isnan(one_by_one)])


def test_keep_freed_memory_sets_and_restores_glibc_malloc() -> None:
    import sys

    from fedsim.learning import allocator

    restore = allocator.keep_freed_memory()
    try:
        if sys.platform.startswith("linux"):
            assert allocator._libc() is not None  # glibc has mallopt / malloc_trim
        import torch

        assert float(torch.ones(4 * 2**20).sum()) == 4 * 2**20  # 16 MiB from the heap: still plain memory
    finally:
        restore()
    restore()  # idempotent


def test_a_figure_less_run_imports_no_plotting_stack(tmp_path: Path) -> None:
    import subprocess
    import sys

    args = ["run", str(DEFAULT), "--quiet", "--no-figures", "--out", str(tmp_path / "run"), *(f"--set={s}" for s in TINY)]
    code = (
        "import sys\nfrom fedsim.cli import main\nrc = main(sys.argv[1:])\n"
        "print('LOADED', sorted(m for m in ('matplotlib', 'matplotlib.pyplot', 'PIL') if m in sys.modules))\nsys.exit(rc)"
    )
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "LOADED []" in done.stdout, done.stdout[-500:]  # the plotting stack only where figures are drawn
