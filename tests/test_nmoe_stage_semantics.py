"""nmoe stage semantics (``protocol.nmoe.stage_deadline_s``): with a generous
stage deadline every client does its part of every stage round (retried as it
comes back online), so every client's expert is trained in stage 2 and none is
left a copy of the FedCE stage-1 predictor (the FedAvg head); with one attempt
(the availability ablation, ``null``) the clients offline at stage 2's start
keep that copy, which is how FedCE+FedGate came to equal FedAvg exactly on
``nmoe-cifar10`` (seed 0: 4 of 10 clients offline)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from fedsim.api import load_scenario
from fedsim.build import build_parts
from fedsim.protocols.nmoe import NMoE

REPO = Path(__file__).resolve().parents[1]
SCENARIO = REPO / "scenarios" / "nmoe-cifar10.yaml"
# the nmoe-cifar10 world (availability and dropout on) with the bundled digits, one stage-1 round
BASE = ["data.dataset=digits", "data.dir=null", "run.rounds=1", "data.tau=0.2", "protocol.nmoe.extractor=fedce",
        "protocol.nmoe.gate=rangate", "protocol.nmoe.inference_horizon_s=1", "output.figures=false", "training.torch_threads=1"]


def _train(extra: list[str]) -> tuple[NMoE, dict, list[dict]]:
    w = build_parts(load_scenario(SCENARIO, BASE + extra, seed=0))
    p = NMoE(w)
    # one expert epoch keeps the test fast (stage 2 starts at the same moment; its compute is shorter)
    p.train_config = (lambda f: (lambda: replace(f(), expert_epochs=1)))(p.train_config)  # type: ignore[method-assign]
    p.train()
    return p, w.sim.rec.rows("nmoe_eval")[0], w.sim.rec.rows("rounds")


def _copies_of_fedavg_head(p: NMoE) -> int:
    head = p.training.ext.head
    return sum(all(torch.equal(e[k], head[k]) for k in head) for e in p.training.experts)


@pytest.mark.parametrize("stage_deadline", ["null", "100000"])
def test_generous_stage_deadline_trains_every_expert(stage_deadline: str) -> None:
    p, ev, rows = _train([f"protocol.nmoe.stage_deadline_s={stage_deadline}"])
    (s2,) = [r for r in rows if r["stage"] == "experts"]
    if stage_deadline == "null":  # one attempt: the artefact, kept as the availability ablation
        assert ev["experts_untrained"] == 4 and ev["retry_wait_s"] == 0.0
        assert s2["completed"] == 6 and s2["skipped"] == 4
        assert _copies_of_fedavg_head(p) == 4
    else:
        assert ev["experts_untrained"] == 0 and ev["retry_wait_s"] > 0
        assert s2["completed"] == s2["selected"] == 10
        assert _copies_of_fedavg_head(p) == 0
        # stage 1 also waited for every client: each round completed with all of them
        assert all(r["completed"] == 10 for r in rows if r["stage"] == "extractor")


def test_stage_deadline_bounds_the_retries() -> None:
    """A stage deadline shorter than the offline periods: retries stop there, so
    stage 2's round lasts at most the deadline and some experts stay untrained."""
    _, ev, rows = _train(["protocol.nmoe.stage_deadline_s=60", "protocol.nmoe.stage_retry_s=20"])
    (s2,) = [r for r in rows if r["stage"] == "experts"]
    assert s2["duration_s"] <= 60.0 + 1e-6
    assert 0 < ev["experts_untrained"] < 10  # cut short: the offline ones, and any slower than the deadline
    assert 0 < ev["retry_wait_s"]
