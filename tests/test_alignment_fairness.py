"""Issue 33 items 2-3: fairness measures (participation, per-client accuracy, weakest device
class), the fair_participation policy, and assignment leakage (random at chance, the group
oracle high)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedsim.alignment import AlignmentState, AssignContext, CapacityEstimate, make_policy
from fedsim.alignment.fairness import (
    fairness_measures,
    jain_index,
    nominal_class_speeds,
    worst_fraction_mean,
)
from fedsim.alignment.leakage import assignment_patterns, leakage_measures, mutual_information_bits

ROOT = Path(__file__).resolve().parents[1]


def _frames() -> dict[str, pd.DataFrame]:
    """A hand-built run: 5 clients with data (e has none), 3 rounds; c never completes."""
    clients = pd.DataFrame({
        "round": [0, 0, 0, 1, 1, 1, 2, 2],
        "client": ["a", "b", "c", "a", "b", "c", "a", "d"],
        "device_class": ["phone", "phone", "sensor", "phone", "phone", "sensor", "phone", "sensor"],
        "status": ["completed", "completed", "straggler", "completed", "dropout", "skipped", "completed", "completed"],
    })
    personal = pd.DataFrame({
        "client": ["a", "b", "c", "d", "e", "f"],
        "accuracy": [0.9, 0.8, 0.2, 0.4, math.nan, 0.7],
        "num_test": [10, 10, 10, 10, 0, 10],
        "num_train": [40, 40, 40, 40, 0, 40],
        "group": [0, 0, 1, 1, 1, 0],
    })
    nodes = pd.DataFrame({
        "node": ["cloud", "a", "b", "c", "d", "e", "f"],
        "kind": ["cloud", "client", "client", "client", "client", "client", "client"],
        "device_class": ["", "phone", "phone", "sensor", "sensor", "camera", "camera"],
    })
    return {"clients": clients, "personal": personal, "nodes": nodes}


def test_fairness_measures_by_hand() -> None:
    m = fairness_measures(_frames(), {"phone": 2e10, "sensor": 5e8, "camera": 1e10})
    # completed client-rounds: a 3, b 1, c 0, d 1, f 0 (e has no data: not in the population)
    x = np.array([3, 1, 0, 1, 0])
    assert m["participation_jain"] == pytest.approx(25 / (5 * 11))
    assert (m["participation_min_share"], m["participation_max_share"]) == (0.0, pytest.approx(3 / 5))
    assert m["never_participated"] == 2.0
    assert m["participation_jain_selected"] == pytest.approx(25 / (4 * 11))  # f was never selected
    # per class, client-rounds per client: phone (3 + 1) / 2 = 2, sensor (0 + 1) / 2 = 0.5, camera 0 / 1 = 0
    assert m["class_participation"] == {"camera": 0.0, "phone": 2.0, "sensor": 0.5}
    assert m["class_participation_jain"] == pytest.approx(2.5 ** 2 / (3 * 4.25))
    assert (m["class_min_share"], m["class_max_share"]) == (0.0, pytest.approx(0.8))
    # accuracies of the 5 clients with a test split: 0.9 0.8 0.2 0.4 0.7; worst 10 %: ceil(0.5) = 1 client
    assert m["client_acc_mean"] == pytest.approx(0.6)
    assert m["client_acc_worst10"] == pytest.approx(0.2)
    assert m["client_acc_spread"] == pytest.approx(0.7)
    assert m["client_acc_std"] == pytest.approx(float(np.std([0.9, 0.8, 0.2, 0.4, 0.7])))
    assert m["weakest_class"] == "sensor" and m["weakest_class_accuracy"] == pytest.approx(0.3)
    assert jain_index(x) == m["participation_jain"]
    # without class speeds the weakest class is unknown, the rest is unchanged
    n = fairness_measures(_frames())
    assert n["weakest_class"] is None and math.isnan(n["weakest_class_accuracy"])
    assert n["participation_jain"] == m["participation_jain"]


def test_jain_worst_and_speeds() -> None:
    assert jain_index([2, 2, 2]) == 1.0 and jain_index([1, 0, 0, 0]) == 0.25
    assert math.isnan(jain_index([])) and math.isnan(jain_index([0, 0]))
    assert worst_fraction_mean(list(range(20)), 0.1) == 0.5  # the 2 lowest of 20
    sp = nominal_class_speeds({"camera": {"flops_mean": 1e3}, "phone": {"flops_mean": None}})
    assert sp["camera"] == 1e3 and sp["phone"] == 2e10 and min(sp, key=sp.get) == "camera"


def test_fair_participation_prefers_and_tries_the_clients_behind() -> None:
    st = AlignmentState(["a", "b", "c", "d"], 2)
    fb = {"a": None, "b": None}
    from fedsim.alignment.state import Feedback

    for _ in range(3):  # a and b contributed 3 rounds each, c and d none
        st.update_fitness({c: Feedback(mean_gate_prob=np.array([0.5, 0.5])) for c in fb})
    assert st.participation.tolist() == [3.0, 3.0, 0.0, 0.0]
    est = {c: CapacityEstimate(latency_s=0.0, down_bps=1e9, up_bps=1e9, flops_per_s=f, memory_bytes=1e12)
           for c, f in {"a": 10.0, "b": 10.0, "c": 5.0, "d": 0.9}.items()}
    # one expert costs 1 FLOP: predicted times a, b 0.1 s, c 0.2 s, d 1.11 s; T = 1 s; 2 uploads close the round
    ctx = AssignContext(estimates=est, deadline_s=1.0, flops_per_expert=1.0, needed=2)
    budgets = {"a": 1, "b": 1, "c": 1, "d": 0}
    sa = make_policy("systems_aware", tie_break="index").assign(list(budgets), budgets, st, np.random.default_rng(0), ctx)
    assert sa == {"a": [0], "b": [0], "c": [], "d": []}  # the two fastest
    zero = make_policy("fair_participation", w_p=0.0, tie_break="index").assign(list(budgets), budgets, st, np.random.default_rng(0), ctx)
    assert zero == sa
    fair = make_policy("fair_participation", w_p=1.0, tie_break="index").assign(list(budgets), budgets, st, np.random.default_rng(0), ctx)
    # deficits: mean 1.5, d(a) = d(b) = -1, d(c) = d(d) = 1: c and d go first; d's budget 0 is raised to 1
    # and its 1.11 s prediction is within T (1 + 1 x 1) = 2 s
    assert fair == {"a": [], "b": [], "c": [0], "d": [0]}
    with pytest.raises(ValueError, match="w_p"):
        make_policy("fair_participation", w_p=-1.0)


def test_leakage_by_hand_and_random_assignment_is_at_chance() -> None:
    a = pd.DataFrame({"round": [0, 0, 1, 1, 1], "client": ["x", "y", "x", "y", "y"], "expert": [0, 1, 0, 1, 2]})
    pat = assignment_patterns(a, 3)
    assert pat.loc["x"].tolist() == [1.0, 0.0, 0.0] and pat.loc["y"].tolist() == pytest.approx([0, 2 / 3, 1 / 3])
    assert mutual_information_bits([0, 0, 1, 1], [5, 5, 6, 6]) == pytest.approx(1.0)
    assert mutual_information_bits([0, 1, 0, 1], [5, 5, 6, 6]) == pytest.approx(0.0)
    # the random policy: 200 clients in 4 groups, 20 rounds, one expert each
    st = AlignmentState(200, 4)
    pol, rng = make_policy("random"), np.random.default_rng(7)
    ids = list(st.client_ids)
    rows = [(r, c, e) for r in range(20) for c, es in pol.assign(ids, dict.fromkeys(ids, 1), st, rng).items() for e in es]
    groups = {c: i % 4 for i, c in enumerate(ids)}
    m = leakage_measures(pd.DataFrame(rows, columns=["round", "client", "expert"]), groups, 4)
    assert m["chance"] == 0.25 and m["n_clients"] == 200 and math.isnan(m["clf_p"])
    sd = math.sqrt(0.25 * 0.75 / 200)  # binomial standard deviation of an accuracy at chance on 200 clients
    assert abs(m["clf_accuracy"] - 0.25) < 3 * sd and abs(m["ami"]) < 0.03


def test_group_oracle_leaks_its_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    """The study's group oracle (bench/alignment_study.py) on the systems setting's clients:
    the assignment history gives the group exactly."""
    from fedsim.alignment import policies as pol
    from fedsim.api import load_scenario
    from fedsim.build import build_parts

    spec = importlib.util.spec_from_file_location("alignment_study", ROOT / "bench" / "alignment_study.py")
    study = sys.modules.get("alignment_study") or importlib.util.module_from_spec(spec)
    if "alignment_study" not in sys.modules:
        monkeypatch.setitem(sys.modules, "alignment_study", study)
        spec.loader.exec_module(study)
    monkeypatch.setitem(pol.POLICIES, "group_oracle", pol.POLICIES["random"])  # restored after the test
    loaded = load_scenario(ROOT / "scenarios" / "alignment-systems.yaml", seed=0)
    study.register_group_oracle(loaded)
    splits = build_parts(loaded).trainer.splits
    groups = {c: int(sp.group) for c, sp in splits.items()}
    ids = sorted(groups)
    st = AlignmentState(ids, 4)
    oracle, rng = make_policy("group_oracle"), np.random.default_rng(0)
    rows = [(r, c, e) for r in range(5) for c, es in oracle.assign(ids, dict.fromkeys(ids, 2), st, rng).items() for e in es]
    m = leakage_measures(pd.DataFrame(rows, columns=["round", "client", "expert"]), groups, 4, permutations=5)
    # no label shuffle reaches the oracle's score: the smallest p-value 5 shuffles give, (0 + 1) / (5 + 1)
    assert m["clf_accuracy"] == 1.0 and m["ami"] == pytest.approx(1.0) and m["clf_p"] == pytest.approx(1 / 6)
    sizes = np.bincount(list(groups.values())) / len(groups)
    assert m["mi_bits"] == pytest.approx(float(-(sizes * np.log2(sizes)).sum()))  # = H(group)


def test_fairness_study_tables_from_run_directories(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """bench/fairness_study.py on hand-built run directories: per-run measures, the paired
    table of a fair arm against systems_aware, pooled leakage."""
    import json

    spec = importlib.util.spec_from_file_location("fairness_study", ROOT / "bench" / "fairness_study.py")
    fs = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "fairness_study", fs)
    spec.loader.exec_module(fs)
    f = _frames()
    for lab, extra in (("systems_aware", 0), ("fair_wp1", 1)):
        for seed in (0, 1):
            d = tmp_path / "runs" / "fairness" / f"{lab}-seed{seed}"
            d.mkdir(parents=True)
            cl = f["clients"].copy()
            if extra:  # the fair arm: f also completes a round
                cl = pd.concat([cl, pd.DataFrame({"round": [2], "client": ["f"], "device_class": ["camera"],
                                                  "status": ["completed"]})], ignore_index=True)
            cl.to_parquet(d / "clients.parquet")
            f["personal"].to_parquet(d / "personal.parquet")
            f["nodes"].to_parquet(d / "nodes.parquet")
            pd.DataFrame({"round": [0, 0, 0, 0], "client": ["a", "b", "c", "d"], "expert": [0, 0, 1, 1]}).to_parquet(d / "assignments.parquet")
            (d / "manifest.json").write_text(json.dumps({"scenario": {"model": {"num_experts": 2}, "devices": {"classes": {}}}}))
    assert fs.main(["--out", str(tmp_path), "--seeds", "2", "--permutations", "0", "--workers", "1"]) == 0
    df = pd.read_csv(tmp_path / "fairness.csv")
    assert len(df) == 4 and (df["weakest_class"] == "sensor").all()
    jain_sa = 25 / (5 * 11)
    jain_fair = 36 / (5 * 12)  # f's round: x = 3, 1, 0, 1, 1
    assert df.loc[df["policy"] == "systems_aware", "participation_jain"].tolist() == pytest.approx([jain_sa] * 2)
    assert df.loc[df["policy"] == "fair_wp1", "participation_jain"].tolist() == pytest.approx([jain_fair] * 2)
    text = (tmp_path / "fairness.md").read_text()
    assert f"| fair_wp1 | participation_jain | {jain_fair - jain_sa:+.3f}" in text
    pooled = pd.read_csv(tmp_path / "leakage_pooled.csv")
    assert pooled["n_clients"].tolist() == [8.0, 8.0]  # 4 clients with a history x 2 seeds
    assert pooled["ami"].tolist() == pytest.approx([1.0, 1.0])  # the assigned expert is the group here
