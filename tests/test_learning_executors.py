"""Training executors: batched and parallel give the sequential reference's updates;
model reuse is invisible; the MLP 784-128-10 is expressible; the CLI stays torch-free."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fedsim.learning.batched import BatchedExecutor
from fedsim.learning.executor_registry import make_executor
from fedsim.learning.executors import SequentialExecutor
from fedsim.learning.models import MoEClassifier, MoEConfig
from fedsim.learning.training import (
    TrainConfig,
    TrainJob,
    Update,
    build_model,
    init_state,
    train_local,
)

REPO = Path(__file__).resolve().parents[1]
CFG = MoEConfig(input_shape=(8,), num_classes=3, widths=(16,), feature_dim=8, num_experts=4, top_k=2, expert_hidden=8, gate_noise_std=0.5)
SIZES = [37, 80, 5, 64, 1]  # unequal, incl. a single sample and sizes that are not multiples of the batch
EXPERTS = [[0], [1, 3], [0, 1, 2, 3], [2], [1, 2]]


def _data(n: int = 200, shape: tuple[int, ...] = (8,)) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, *shape, generator=g), torch.randint(0, 3, (n,), generator=g)


def _jobs(tc: TrainConfig, cfg: MoEConfig = CFG, sizes: list[int] = SIZES, experts: list[list[int]] = EXPERTS,
          state: dict | None = None) -> list[TrainJob]:  # fmt: skip
    x, y = _data(sum(sizes), cfg.input_shape)
    st = init_state(cfg, 0) if state is None else state
    out, o = [], 0
    for i, (n, e) in enumerate(zip(sizes, experts)):
        out.append(TrainJob(client_id=i, round=1, global_state=st, model_config=cfg, experts=e, x=x[o : o + n], y=y[o : o + n], train=tc, seed=100 + i))
        o += n
    return out


def _assert_same(a: list[Update], b: list[Update], atol: float) -> None:
    assert [u.client_id for u in a] == [u.client_id for u in b]
    for u, v in zip(a, b):
        assert u.state.keys() == v.state.keys() and u.experts == v.experts
        for k in u.state:
            torch.testing.assert_close(v.state[k], u.state[k], atol=atol, rtol=0, msg=k)
        np.testing.assert_array_equal(v.samples_per_expert, u.samples_per_expert)
        np.testing.assert_allclose(v.mean_gate_prob, u.mean_gate_prob, atol=max(1e-6, atol))
        np.testing.assert_allclose([v.loss_first, v.loss_last], [u.loss_first, u.loss_last], rtol=1e-5)
        assert (v.num_samples, v.num_steps, v.flops) == (u.num_samples, u.num_steps, u.flops)


MIXED = {
    "sgd_momentum_wd": TrainConfig(lr=0.1, momentum=0.9, weight_decay=1e-3, local_epochs=2, batch_size=16),
    "adam_wd": TrainConfig(optimizer="adam", lr=0.01, weight_decay=1e-3, local_epochs=2, batch_size=16),
    "sgd_fedprox_frozen_shared": TrainConfig(lr=0.1, local_epochs=3, batch_size=8, fedprox_mu=0.1, train_shared=False),
    "adam_fedprox": TrainConfig(optimizer="adam", lr=0.01, batch_size=16, fedprox_mu=0.1),
}
# top-1 routing with tiny batches: in many steps an assigned expert gets no sample, so torch's
# optimisers skip it (no momentum step, no weight decay, no Adam step count); the batched one must too
SPARSE = {
    "sgd_momentum_top1": TrainConfig(lr=0.1, momentum=0.9, weight_decay=1e-2, local_epochs=2, batch_size=3),
    "adam_top1": TrainConfig(optimizer="adam", lr=0.01, weight_decay=1e-2, local_epochs=2, batch_size=3),
}


@pytest.mark.parametrize("name", list(MIXED) + list(SPARSE))
def test_batched_equals_sequential_on_a_mixed_round(name: str) -> None:
    # Prepare: unequal local sizes, different expert sets (1 to 4 experts), gate noise, the optimiser
    jobs = _jobs(MIXED[name]) if name in MIXED else _jobs(SPARSE[name], cfg=dataclasses.replace(CFG, top_k=1))
    # Execute
    ref = SequentialExecutor().run(jobs)
    got = BatchedExecutor().run(jobs)
    # Check: same updates within float tolerance (Adam divides by sqrt(v): a gradient of a
    # few ulps has its rounding amplified up to lr-sized steps, hence the looser bound);
    # weights really moved (the test can fail)
    _assert_same(ref, got, atol=2e-5 if "adam" in name else 2e-6)
    moved = max((got[1].state[k] - jobs[1].global_state[k]).abs().max().item() for k in got[1].state)
    assert moved > 1e-3


def test_batched_small_cohorts_and_cnn_backbone_match() -> None:
    cfg = dataclasses.replace(CFG, input_shape=(1, 8, 8), backbone="cnn", widths=(4, 8), gate_noise_std=0.0)
    jobs = _jobs(MIXED["sgd_momentum_wd"], cfg=cfg)
    ref = SequentialExecutor().run(jobs)
    # a budget that fits one client per cohort: chunking must not change anything
    _assert_same(ref, BatchedExecutor(memory_budget_bytes=1, batch_conv=True).run(jobs), atol=2e-6)
    _assert_same(ref, BatchedExecutor(batch_conv=True).run(jobs), atol=2e-6)
    # by default a cnn runs sequentially (faster on a CPU): the reference's updates exactly
    assert not BatchedExecutor()._skeleton(cfg, "cpu").batchable
    _assert_same(ref, BatchedExecutor().run(jobs), atol=0.0)


def test_batched_mixed_configs_keep_job_order_and_different_global_states() -> None:
    tc_a, tc_b = MIXED["sgd_momentum_wd"], MIXED["adam_wd"]
    other = init_state(CFG, 1)
    jobs = _jobs(tc_a)[:3] + _jobs(tc_b, state=other)[3:]
    jobs = [jobs[i] for i in (4, 0, 3, 1, 2)]
    _assert_same(SequentialExecutor().run(jobs), BatchedExecutor().run(jobs), atol=2e-6)


def test_reused_model_gives_the_fresh_models_update_bit_for_bit() -> None:
    jobs = _jobs(MIXED["adam_fedprox"])
    ex = SequentialExecutor()
    reused = ex.run(jobs + jobs[::-1])  # the second pass sees a model left behind by other jobs
    for job, a, b in zip(jobs, reused[: len(jobs)], reused[len(jobs) :][::-1]):
        fresh = train_local(job)
        for u in (a, b):
            assert all(torch.equal(u.state[k], fresh.state[k]) for k in fresh.state)
            assert u.loss_last == fresh.loss_last
    assert len(ex._models) == 1
    # the job's global state is never written
    assert all(torch.equal(v, init_state(CFG, 0)[k]) for k, v in jobs[0].global_state.items())


def test_parallel_equals_sequential_across_rounds() -> None:
    tc = MIXED["sgd_momentum_wd"]
    jobs = _jobs(tc)
    ref = SequentialExecutor().run(jobs)
    with make_executor("parallel", workers=2) as ex:
        got = ex.run(jobs)
        _assert_same(ref, got, atol=0.0)  # the same code on the same inputs: identical
        # round 2: new global weights, data already held by the workers, a subset of the clients
        state2 = {k: v + 0.01 for k, v in init_state(CFG, 0).items()}
        jobs2 = [dataclasses.replace(j, global_state=state2, round=2) for j in jobs[1:4]]
        _assert_same(SequentialExecutor().run(jobs2), ex.run(jobs2), atol=0.0)
        with pytest.raises(ValueError, match="experts"):
            ex.run([dataclasses.replace(jobs[0], experts=[9])])
    assert ex._procs == []


def test_linear_expert_without_feature_layer_is_the_plain_mlp() -> None:
    cfg = MoEConfig((784,), 10, widths=(128,), feature_dim=128, num_experts=1, top_k=1, expert_hidden=0, feature_layer=False)
    model = build_model(cfg, seed=3)
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == (784 * 128 + 128) + (128 * 10 + 10) + (128 + 1)  # MLP 784-128-10 plus the 128 -> 1 gate
    mlp = torch.nn.Sequential(torch.nn.Linear(784, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
    mlp.load_state_dict({"0.weight": model.backbone[1].weight, "0.bias": model.backbone[1].bias,
                         "2.weight": model.experts[0].fc2.weight, "2.bias": model.experts[0].fc2.bias})  # fmt: skip
    x = torch.randn(5, 784)
    torch.testing.assert_close(model(x).logits, mlp(x))
    with pytest.raises(ValueError, match="feature_layer"):
        MoEConfig((784,), 10, widths=(128,), feature_dim=64, feature_layer=False)


def test_unbatchable_model_falls_back_to_sequential() -> None:
    # BatchNorm buffers (resnet18) cannot be vmapped through training: the batched executor defers
    cfg = MoEConfig((3, 8, 8), 3, backbone="resnet18", feature_dim=8, num_experts=2, top_k=1, expert_hidden=0)
    ex = BatchedExecutor()
    assert not ex._skeleton(cfg, "cpu").batchable
    assert BatchedExecutor()._skeleton(CFG, "cpu").batchable


def _fresh(code: str) -> str:
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_cli_help_and_validate_do_not_import_torch() -> None:
    code = (
        "import sys\nfrom fedsim.cli import main\n"
        "for argv in (['--help'], ['validate', 'scenarios/smart-city-small.yaml']):\n"
        "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
        "print('TORCH', 'torch' in sys.modules)\n"
    )
    assert "TORCH False" in _fresh(code)
    # the probe can fail: importing the training module does import torch
    assert "TORCH True" in _fresh("import sys, fedsim.learning.training; print('TORCH', 'torch' in sys.modules)")


def test_executor_is_read_from_the_scenario_and_events_are_identical(tmp_path: Path) -> None:
    import pandas as pd

    from fedsim.cli import main

    small = ["run.rounds=2", "data.max_train_samples=300", "evaluation.max_test_samples=100",
             "topology.grid.clients={phone: 3, vehicle: 2, sensor: 2, camera: 1}"]  # fmt: skip
    dirs = {}
    for ex in ("sequential", "batched"):
        dirs[ex] = tmp_path / ex
        argv = ["run", str(REPO / "scenarios" / "smart-city-small.yaml"), "--out", str(dirs[ex]), "--quiet", "--no-figures"]
        assert main(argv + [f"--set={s}" for s in small + [f"training.executor={ex}"]]) == 0
    for table in ("events", "clients", "assignments"):
        assert (dirs["sequential"] / f"{table}.parquet").read_bytes() == (dirs["batched"] / f"{table}.parquet").read_bytes(), table
    a, b = (pd.read_parquet(d / "rounds.parquet") for d in dirs.values())
    np.testing.assert_allclose(a["accuracy"], b["accuracy"], atol=0.02)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error where no GPU is present")
def test_cuda_without_a_gpu_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fedsim.cli import main

    code = main(["run", str(REPO / "scenarios" / "smart-city-small.yaml"), "--out", str(tmp_path / "r"), "--quiet",
                 "--set=training.device=cuda", "--set=run.rounds=1"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "training.device" in err[0] and "CUDA" in err[0]
    assert not (tmp_path / "r").exists()


def test_model_classifier_importable_from_package_lazily() -> None:
    import fedsim.learning as L

    assert L.MoEClassifier is MoEClassifier and callable(L.partition)


def test_world_builds_the_scenarios_executor() -> None:
    import fedsim
    from fedsim.build import build_parts
    from fedsim.learning.parallel import ParallelExecutor

    small = ["data.max_train_samples=200", "topology.grid.clients={phone: 2, sensor: 1}"]
    kinds = {"sequential": SequentialExecutor, "batched": BatchedExecutor, "parallel": ParallelExecutor}
    for name, cls in kinds.items():
        parts = build_parts(fedsim.load_scenario(REPO / "scenarios" / "smart-city-small.yaml", [*small, f"training.executor={name}", "training.workers=3"]))
        assert parts.trainer._executor is None  # built at the first training jobs, not before
        ex = parts.trainer._make_executor()
        assert type(ex) is cls
        if name == "parallel":
            assert ex.workers == 3 and ex._procs == []  # workers start on the first round, not before
        ex.close()
        parts.finish()
