"""fedmoe's synchronous client round on the systems test double, with hand-computed times.

One client, phases download 1 s, compute 2 s, upload 1 s (``tests/systems_double.py``),
one round, no server compute. Each fault ends the round at a time computed by hand:

- none: download [0, 1], compute [1, 3], upload [3, 4] -> completed at 4;
- deadline 2.5 s: cut in compute at 2.5 (1.5 s computed) -> straggler;
- offline from 3.5: dropout in the upload at 3.5 (0.5 s, half the bytes sent);
- 1 byte of memory: the compute job is refused at 1 -> oom, nothing computed;
- link outage [0.5, 2.5): the download stalls 2 s -> ends at 3, compute to 5, upload to 6.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fedsim.build import build_parts, load_checked
from fedsim.protocols.fedmoe import FedMoE
from tests.systems_double import TimedSystems

SMALL = Path(__file__).resolve().parents[1] / "scenarios" / "smart-city-small.yaml"
BASE = [
    "run.rounds=1", "data.max_train_samples=200", "evaluation.max_test_samples=20",
    "protocol.fedmoe.clients_per_round=1", "protocol.fedmoe.over_selection=1.0", "protocol.fedmoe.server_compute_s=0",
    "topology.grid.clients={phone: 2, sensor: 1}",
]


def _round(deadline_s: float = 10.0, **faults: Any) -> tuple[dict, dict, FedMoE]:
    """Run one round for one client on the double; returns its ``clients`` row, the ``rounds`` row, the protocol."""
    parts = build_parts(load_checked(SMALL, [*BASE, f"protocol.fedmoe.deadline_s={deadline_s}"]))
    c = next(c for c in parts.clients if parts.trainer.num_samples(c) > 0)
    parts.clients[:] = [c]
    parts.systems = TimedSystems(parts.sim.env, parts.systems.server, [c], {c: (1.0, 2.0, 1.0)}, **{k: {c: v} for k, v in faults.items()})
    p = FedMoE(parts)
    p.run()
    (row,) = parts.sim.rec.rows("clients")
    (rnd,) = parts.sim.rec.rows("rounds")
    return row, rnd, p


def _times(row: dict) -> tuple[float, float, float, float]:
    return row["t_download_s"], row["t_compute_s"], row["t_upload_s"], row["t_end_s"]


def test_a_clean_round_takes_the_sum_of_its_phases() -> None:
    row, rnd, _ = _round()
    assert row["status"] == "completed" and _times(row) == (1.0, 2.0, 1.0, 4.0)
    assert row["wasted_s"] == 0.0 and row["bytes_up"] == row["bytes_down"] > 0
    assert rnd["completed"] == 1 and rnd["t_end_s"] == 4.0  # the round closes at its one completion


def test_the_deadline_cuts_the_client_in_compute() -> None:
    row, rnd, _ = _round(deadline_s=2.5)
    assert row["status"] == "straggler" and _times(row) == (1.0, 1.5, 0.0, 2.5)
    assert row["wasted_s"] == 2.5 and row["bytes_up"] == 0.0
    assert (rnd["stragglers"], rnd["completed"], rnd["t_end_s"]) == (1, 0, 2.5)


def test_going_offline_in_the_upload_is_a_dropout_with_half_the_bytes() -> None:
    row, rnd, _ = _round(offline=[(3.5, 100.0)])
    assert row["status"] == "dropout" and _times(row) == (1.0, 2.0, 0.5, 3.5)
    assert row["bytes_up"] == pytest.approx(row["bytes_down"] / 2)
    assert row["wasted_bytes"] == pytest.approx(1.5 * row["bytes_down"]) and rnd["dropouts"] == 1


def test_a_job_that_does_not_fit_is_an_oom_at_the_start_of_compute() -> None:
    row, rnd, _ = _round(memory=1.0)
    assert row["status"] == "oom" and _times(row) == (1.0, 0.0, 0.0, 1.0)
    assert rnd["ooms"] == 1 and row["bytes_up"] == 0.0


def test_a_link_outage_stalls_the_download() -> None:
    row, _, _ = _round(outage=[(0.5, 2.5)])
    assert row["status"] == "completed" and _times(row) == (3.0, 2.0, 1.0, 6.0)
