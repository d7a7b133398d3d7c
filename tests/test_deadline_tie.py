"""The deadline tie (issue 29, item 5): an upload whose last byte arrives exactly at
the round deadline has arrived. ``events`` (its transfer ``completed``), ``clients``
(status ``completed``, nothing wasted) and the aggregation agree."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from fedsim.api import run
from fedsim.build import load_checked

SCENARIO = Path(__file__).resolve().parents[1] / "scenarios" / "smart-city-small.yaml"
BASE = [
    "run.rounds=1", "data.max_train_samples=300", "evaluation.max_test_samples=100",
    "topology.grid.clients={phone: 3, vehicle: 3, sensor: 2, camera: 2}", "protocol.fedmoe.clients_per_round=4",
    "protocol.fedmoe.over_selection=1", "training.local_epochs=1", "protocol.fedmoe.alignment.max_experts_per_client=1",
    "channel.fading=none", "devices.dropout=false",
]


def _run(tmp: Path, name: str, deadline_s: float) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    r = run(load_checked(SCENARIO, [*BASE, f"protocol.fedmoe.deadline_s={deadline_s!r}"]), tmp / name, figures=False)
    return r.clients, r.events, r.rounds


def _agree(clients: pd.DataFrame, events: pd.DataFrame) -> None:
    """Every client whose upload transfer is ``completed`` in events is ``completed`` in clients."""
    up = events[(events["kind"] == "transfer") & (events["tag"] == "upload")]
    arrived = set(up[up["completed"].astype(bool)]["node"])
    done = set(clients[clients["status"] == "completed"]["client"])
    assert arrived == done
    assert (clients[clients["status"] == "completed"]["wasted_bytes"] == 0).all()


def test_upload_finishing_at_the_deadline_counts(tmp_path: Path) -> None:
    # 1. with a generous deadline everyone arrives; the last upload ends at t_last (round 0 starts at t = 0)
    c0, e0, _ = _run(tmp_path, "free", 1000.0)
    assert (c0["status"] == "completed").all()
    last = c0.loc[c0["t_end_s"].idxmax()]
    # 2. the same round with the deadline exactly at that upload's end (same budgets: one expert each)
    c1, e1, r1 = _run(tmp_path, "tie", float(last["t_end_s"]))
    tie = c1.set_index("client").loc[last["client"]]
    assert tie["t_end_s"] == last["t_end_s"]  # the same timeline: the tie really happens
    assert tie["status"] == "completed" and tie["wasted_bytes"] == 0 and tie["bytes_up"] == last["bytes_up"]
    _agree(c1, e1)
    assert int(r1["completed"].iloc[0]) == len(c1) and int(r1["stragglers"].iloc[0]) == 0
    assert not ((e1["kind"] == "client_lost") & (e1["node"] == last["client"])).any()
    # 3. a deadline a hair earlier cuts that client: a straggler, its upload not completed
    c2, e2, _ = _run(tmp_path, "early", float(last["t_end_s"]) * (1 - 1e-6))
    assert c2.set_index("client").loc[last["client"], "status"] == "straggler"
    _agree(c2, e2)
