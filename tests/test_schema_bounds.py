"""Every numeric key has lower and upper bounds, and extreme values never crash
(issue 18, item 4).

The keys come from the schema (:mod:`tests.schema_keys`), so keys added later are
covered. For each numeric key: the schema accepts it at each bound and rejects it
just past, with the one-line ``FILE: key.path: rule`` error; and a world built with
the key at a bound either simulates a few seconds or fails with that one-line
error, never with a traceback (an ``OverflowError`` from a block length near the
largest float was the report).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from fedsim.api import load_scenario
from fedsim.build import build_parts
from fedsim.config import ScenarioError
from tests.schema_keys import Leaf, leaves

REPO = Path(__file__).resolve().parents[1]
DEFAULT = REPO / "scenarios" / "smart-city-small.yaml"
TINY = [
    "data.max_train_samples=60",
    "evaluation.max_test_samples=30",
    "topology.grid.clients={phone: 2, vehicle: 1, sensor: 1, camera: 2, drone: 1}",
    "model.hidden=8",
    "model.feature_dim=8",
    "model.expert_hidden=8",
]
NUMERIC = [lf for lf in leaves() if lf.numeric]


def _fmt(leaf: Leaf, v: float) -> str:
    return str(int(v)) if leaf.kind == "int" else repr(float(v))


def _at_and_past(leaf: Leaf) -> list[tuple[str, float, float]]:
    """(side, value at the bound, value just past it) for each side."""
    out = []
    step_in = (lambda b, d: b + d) if leaf.kind == "int" else (lambda b, d: math.nextafter(b, math.copysign(math.inf, d)))
    if leaf.lo is not None:
        lo = float(leaf.lo)
        at = step_in(lo, 1) if leaf.lo_strict else lo
        past = lo if leaf.lo_strict else step_in(lo, -1)
        out.append(("lower", at, past))
    if leaf.hi is not None:
        hi = float(leaf.hi)
        at = step_in(hi, -1) if leaf.hi_strict else hi
        past = hi if leaf.hi_strict else step_in(hi, 1)
        out.append(("upper", at, past))
    return out


def test_every_numeric_key_has_both_bounds() -> None:
    missing = [lf.path for lf in NUMERIC if lf.lo is None or lf.hi is None]
    assert not missing, f"numeric keys without a lower or upper bound: {missing}"
    assert len(NUMERIC) > 60


@pytest.mark.parametrize("leaf", NUMERIC, ids=[lf.path for lf in NUMERIC])
def test_schema_accepts_the_bounds_and_rejects_just_past(leaf: Leaf) -> None:
    for side, at, past in _at_and_past(leaf):
        try:
            load_scenario(DEFAULT, [*TINY, f"{leaf.path}={_fmt(leaf, at)}"])
        except ScenarioError as e:  # only a cross-field rule may object to a bound value
            assert leaf.path not in str(e) or "must be" not in e.rule or "<=" in e.rule or ">=" in e.rule, str(e)
        with pytest.raises(ScenarioError) as ei:
            load_scenario(DEFAULT, [*TINY, f"{leaf.path}={_fmt(leaf, past)}"])
        msg = str(ei.value)
        assert "\n" not in msg and leaf.path in msg, f"{side} bound of {leaf.path}: {msg}"


@pytest.mark.parametrize("leaf", NUMERIC, ids=[lf.path for lf in NUMERIC])
def test_a_world_at_the_bounds_simulates_or_fails_in_one_line(leaf: Leaf) -> None:
    for _side, at, _past in _at_and_past(leaf):
        try:
            loaded = load_scenario(DEFAULT, [*TINY, f"{leaf.path}={_fmt(leaf, at)}"])
            parts = build_parts(loaded)
            parts.sim.env.run(until=3.0)
        except ScenarioError as e:
            assert "\n" not in str(e)
