"""Async bytes (issue 29, item 4): every byte the cells carried is in the client
accounting, with its status: folded (``completed``), lost, ``buffered`` (arrived,
not folded when the run stopped) or ``in_flight`` (still working when the run
stopped, with the bytes its phase moved); ``rounds`` sums to the same bytes."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from fedsim.api import run
from fedsim.build import load_checked

SCENARIO = Path(__file__).resolve().parents[1] / "scenarios" / "smart-city-small.yaml"
SMALL = [
    "run.rounds=4", "data.max_train_samples=300", "evaluation.max_test_samples=100",
    "topology.grid.clients={phone: 4, vehicle: 4, sensor: 3, camera: 3}", "protocol.fedmoe.clients_per_round=3",
    "training.local_epochs=1", "protocol.fedmoe.fedbuff.concurrency=6",
]


# semi_async: rounds shorter than a client's work (~0.05-0.1 s here), so late clients span rounds
@pytest.mark.parametrize(("mode", "extra"), [("async", []), ("semi_async", ["protocol.fedmoe.fedbuff.period_s=0.03"])])
def test_every_byte_the_cells_carried_is_in_the_clients_table(tmp_path: Path, mode: str, extra: list[str]) -> None:
    r = run(load_checked(SCENARIO, [*SMALL, f"protocol.fedmoe.aggregation={mode}", *extra]), tmp_path / mode, figures=False)
    cl, ev, rounds = r.clients, r.events, r.rounds
    edges = pd.read_parquet(r.run_dir / "edges.parquet")
    cells = float(edges[edges["kind"].isin(["uplink", "downlink"])]["bytes_carried"].sum())
    moved = float((cl["bytes_up"] + cl["bytes_down"]).sum())
    assert cells > 0
    assert moved == pytest.approx(cells, rel=1e-9)
    assert float((rounds["bytes_up"] + rounds["bytes_down"]).sum()) == pytest.approx(moved, rel=1e-9)
    # one clients row per dispatch (each dispatch starts with a download, cut or not)
    downloads = ev[(ev["kind"] == "transfer") & (ev["tag"] == "download")]
    assert len(cl[cl["status"] != "skipped"]) == len(downloads)
    # the end of the run left work behind, and it is labelled
    assert {"in_flight", "buffered"} & set(cl["status"]), cl["status"].value_counts()
    left = cl[cl["status"].isin(["in_flight", "buffered"])]
    assert (left["wasted_bytes"] == left["bytes_up"] + left["bytes_down"]).all()
