"""Issue 26: the paper's alignment measures (routed-sample shares, entropy, group-macro
accuracy, rounds / bytes / seconds to target), per-client inference over trained experts
only, and epsilon-greedy."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedsim.alignment import AlignmentState, GreedyPolicy
from fedsim.alignment.measures import alignment_measures, normalised_entropy, routed_shares
from fedsim.learning.routing import client_expert_masks

ROOT = Path(__file__).resolve().parents[1]


def test_masks_use_only_the_clients_trained_experts() -> None:
    # client 0 trained only expert 2; expert 3 has the higher fitness but was never trained by it
    F = np.array([[0.0, 0.0, 0.1, 0.9], [0.5, 0.4, 0.3, 0.2], [0.9, 0.0, 0.0, 0.0]])
    T = np.array([[False, False, True, False], [True, True, True, False], [False, False, False, False]])
    m = [mk.numpy().nonzero()[0].tolist() for mk in client_expert_masks(F, 2, T)]
    assert m[0] == [2]  # fewer than k: only what it trained (before issue 26: [0, 3])
    assert m[1] == [0, 1]  # its two best trained experts
    assert m[2] == [0, 1, 2]  # trained none: the experts trained by any client
    nobody = client_expert_masks(F, 1, np.zeros_like(T))
    assert all(mk.all() for mk in nobody)  # before the first aggregation: every expert
    with pytest.raises(ValueError, match="shape"):
        client_expert_masks(F, 1, T[:2])


def test_per_client_inference_never_routes_to_an_untrained_expert(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real fedmoe run (k = 2 experts per client): every per-client mask of every evaluation
    is within the experts that client trained in an aggregated update before it, as read back
    from the run's own ``clients`` table."""
    import fedsim.learning.routing as routing
    from fedsim.api import load_scenario, run

    seen: list[tuple[np.ndarray, np.ndarray]] = []
    real = routing.client_expert_mask_matrix

    def spy(fitness, k, trained=None):  # noqa: ANN001, ANN202
        masks = real(fitness, k, trained)
        seen.append((masks.copy(), np.array(trained, dtype=bool)))
        return masks

    monkeypatch.setattr(routing, "client_expert_mask_matrix", spy)
    loaded = load_scenario(ROOT / "scenarios" / "smart-city-small.yaml", [
        "run.rounds=4", "data.max_train_samples=300", "evaluation.max_test_samples=100",
        "protocol.fedmoe.alignment.policy=random", "model.num_experts=6",
    ], seed=1)
    res = run(loaded, tmp_path / "r", figures=False)
    clients = pd.read_parquet(res.run_dir / "clients.parquet")
    order = list(pd.read_parquet(res.run_dir / "personal.parquet")["client"])
    assert len(seen) == 4
    for r, (masks, trained) in enumerate(seen):
        done = clients[(clients["round"] <= r) & (clients["status"] == "completed")]
        expect = np.zeros_like(trained)
        for c, ex in zip(done["client"], done["experts"]):
            for e in str(ex).split(","):
                expect[order.index(c), int(e)] = True
        assert (trained == expect).all()
        own = trained.any(axis=1)
        assert own.any()
        assert not (masks[own] & ~trained[own]).any(), f"round {r}: a client routed to an expert it never trained"
        assert (masks.sum(axis=1)[own] <= 2).all()
    m = __import__("json").loads((res.run_dir / "alignment.json").read_text())
    assert len(m["share_cum"]) == 6 and math.isclose(sum(m["share_cum"]), 1.0)
    assert 0 < m["routed_entropy"] <= 1
    # fedsim info / compare show the same measures, computed from the tables
    from analysis.alignment_measures import add_alignment_columns
    from analysis.info import summary_table

    rows = dict(summary_table(res.run_dir))
    assert rows["routed-sample entropy"].startswith(f"{m['routed_entropy']:.3f}")
    assert rows["group-macro accuracy"] == "—" or math.isfinite(float(rows["group-macro accuracy"]))
    df = add_alignment_columns(pd.DataFrame({"name": ["r"]}), [res.run_dir])
    assert df["routed_entropy"].iloc[0] == pytest.approx(m["routed_entropy"])
    assert df["max_share"].iloc[0] == pytest.approx(max(m["share_cum"]))
    # issue 33: the fairness measures, by hand from the run's own tables
    personal = pd.read_parquet(res.run_dir / "personal.parquet")
    pop = personal.loc[personal["num_train"] > 0, "client"]
    done = clients[clients["status"] == "completed"]["client"].value_counts()
    x = np.array([done.get(c, 0) for c in pop], dtype=float)
    assert m["participation_jain"] == pytest.approx(x.sum() ** 2 / (len(x) * (x ** 2).sum()))
    assert m["never_participated"] == float((x == 0).sum())
    acc = np.sort(personal.loc[personal["num_test"] > 0, "accuracy"].to_numpy())
    assert m["client_acc_worst10"] == pytest.approx(acc[: math.ceil(len(acc) / 10)].mean())
    assert m["weakest_class"] == "sensor"  # smart-city-small: the default classes, sensors the slowest
    assert rows["participation (completed client-rounds)"].startswith(f"Jain {m['participation_jain']:.3f}")
    assert rows["weakest device class accuracy"].startswith("sensor")
    assert df["participation_jain"].iloc[0] == pytest.approx(m["participation_jain"])


def test_measures_by_hand() -> None:
    experts = pd.DataFrame({
        "round": [0, 0, 0, 1, 1, 1],
        "expert": [0, 1, 2, 0, 1, 2],
        "samples": [30.0, 10.0, 0.0, 30.0, 30.0, 0.0],
    })
    rounds = pd.DataFrame({
        "round": [0, 1], "accuracy": [0.4, 0.7], "accuracy_macro": [0.3, 0.6], "t_end_s": [2.0, 5.0],
        "bytes_up": [100.0, 100.0], "bytes_down": [10.0, 10.0],
    })
    m = alignment_measures({"experts": experts, "rounds": rounds}, 0.5)
    share = np.array([60, 40, 0]) / 100
    assert m["share_cum"] == pytest.approx(share.tolist())
    h = -(0.6 * math.log(0.6) + 0.4 * math.log(0.4)) / math.log(3)
    assert m["routed_entropy"] == pytest.approx(h)
    r0 = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25)) / math.log(3)
    assert m["routed_entropy_round"] == pytest.approx((r0 + math.log(2) / math.log(3)) / 2)
    assert (m["max_share"], m["min_share"], m["starved_experts"]) == (0.6, 0.0, 1.0)
    assert (m["rounds_to_target"], m["t_target_s"], m["bytes_to_target"]) == (2.0, 5.0, 220.0)
    assert (m["accuracy"], m["accuracy_macro"]) == (0.7, 0.6)
    assert math.isnan(alignment_measures({"experts": experts, "rounds": rounds}, 0.9)["bytes_to_target"])
    assert routed_shares(experts).loc[0].tolist() == pytest.approx([0.75, 0.25, 0.0])
    assert normalised_entropy(np.ones(4)) == pytest.approx(1.0)
    assert normalised_entropy(np.array([1.0, 0, 0])) == 0.0


def test_epsilon_greedy_explores_and_epsilon_zero_is_greedy() -> None:
    st = AlignmentState(40, 4, init_fitness=np.tile([0.9, 0.1, 0.1, 0.1], (40, 1)))
    clients = [str(i) for i in range(40)]
    budgets = dict.fromkeys(clients, 1)
    pure = GreedyPolicy().assign(clients, budgets, st, np.random.default_rng(0))
    zero = GreedyPolicy(epsilon=0.0).assign(clients, budgets, st, np.random.default_rng(0))
    assert pure == zero and all(v == [0] for v in pure.values())
    some = GreedyPolicy(epsilon=0.5).assign(clients, budgets, st, np.random.default_rng(0))
    off = sum(v != [0] for v in some.values())
    assert 5 <= off <= 30  # about 40 * 0.5 * 3/4 = 15 leave the top expert
    with pytest.raises(ValueError, match="epsilon"):
        GreedyPolicy(epsilon=1.5)
