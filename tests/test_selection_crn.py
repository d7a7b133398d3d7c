"""fedmoe's client selection uses common random numbers: the ``selection`` stream is
consumed the same way whoever is online, so runs that differ in availability history
(as runs of different alignment policies do, since their rounds end at different
simulated times) still select the same clients whenever the same clients are online."""

from __future__ import annotations

from pathlib import Path

from fedsim.build import build_parts, load_checked
from fedsim.protocols.fedmoe import FedMoE

SMALL = Path(__file__).resolve().parents[1] / "scenarios" / "smart-city-small.yaml"


def _protocol() -> FedMoE:
    w = build_parts(load_checked(SMALL, ["data.max_train_samples=300", "evaluation.max_test_samples=100"]))
    return FedMoE(w)


def test_selection_after_a_round_with_other_clients_online_is_unchanged() -> None:
    a, b = _protocol(), _protocol()
    clients = [c for c in a.clients if a.trainer.num_samples(c) > 0]
    assert len(clients) >= 12
    away = set(clients[:5])
    for p, offline in ((a, set()), (b, away)):
        p.systems.is_online = lambda c, off=offline: c not in off  # type: ignore[method-assign]
    a.select(0)
    sel_b0 = b.select(0)
    assert not away & set(sel_b0)
    for p in (a, b):
        p.systems.is_online = lambda c: True  # type: ignore[method-assign]
    for r in range(1, 6):
        assert a.select(r) == b.select(r), r
    # and the draw still varies from round to round
    assert a.select(6) != a.select(7)


def test_one_client_more_or_less_online_changes_at_most_one_selected_client() -> None:
    """Online sets that differ by one client (what different round end times cause)
    give selections that differ by at most that client, not a reshuffled draw."""
    for r in range(8):
        a = _protocol()
        a.systems.is_online = lambda c: True  # type: ignore[method-assign]
        for q in range(r):  # advance the stream to round r
            a.select(q)
        clients = [c for c in a.clients if a.trainer.num_samples(c) > 0]
        sel_a = a.select(r)
        for gone in (next(c for c in clients if c not in sel_a), sel_a[0]):
            b2 = _protocol()
            for q in range(r):
                b2.select(q)
            b2.systems.is_online = lambda c, g=gone: c != g  # type: ignore[method-assign]
            sel_b = b2.select(r)
            assert len(set(sel_a) - set(sel_b)) <= 1 and (gone in sel_a or sel_a == sel_b), (r, gone, sel_a, sel_b)


def test_selection_is_a_uniform_draw_among_the_online() -> None:
    p = _protocol()
    p.systems.is_online = lambda c: True  # type: ignore[method-assign]
    clients = [c for c in p.clients if p.trainer.num_samples(c) > 0]
    counts = dict.fromkeys(clients, 0)
    rounds = 400
    for r in range(rounds):
        sel = p.select(r)
        assert len(sel) == len(set(sel)) == min(len(clients), -(-p.cfg.clients_per_round * p.cfg.over_selection // 1))
        for c in sel:
            counts[c] += 1
    share = len(p.select(0)) / len(clients)
    expected = rounds * share
    # binomial: every client within 5 standard deviations of its expected count
    sd = (rounds * share * (1 - share)) ** 0.5
    assert all(abs(n - expected) < 5 * sd for n in counts.values()), counts


def test_crn_select_rejects_impossible_requests() -> None:
    import numpy as np
    import pytest

    from fedsim.protocols.base import crn_select

    rng = np.random.default_rng(0)
    assert crn_select(rng, ["a", "b", "c"], [True, False, True], 2) == ["a", "c"]
    assert crn_select(rng, ["a", "b", "c"], [False, True, False], 0) == []
    with pytest.raises(ValueError, match="cannot choose 3 of 2"):
        crn_select(rng, ["a", "b", "c"], [True, True, False], 3)
    with pytest.raises(ValueError, match="2 flags for 3 clients"):
        crn_select(rng, ["a", "b", "c"], [True, False], 1)


def test_crn_select_takes_the_smallest_priorities_among_the_eligible() -> None:
    """By hand: the priorities are the stream's next ``len(clients)`` uniforms."""
    import numpy as np

    from fedsim.protocols.base import crn_select

    clients = [f"c{i}" for i in range(50)]
    ok = [i % 3 != 0 for i in range(50)]
    prio = np.random.default_rng(7).random(50)
    expect = sorted(sorted((c for c, e in zip(clients, ok) if e), key=lambda c: prio[clients.index(c)])[:9])
    assert crn_select(np.random.default_rng(7), clients, ok, 9) == expect
