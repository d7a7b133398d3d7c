"""Scenario loading: defaults, extends, --set, 1e9 floats, line tracking."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedsim.config import ScenarioError, load_scenario, parse_overrides
from fedsim.config.schema import Scenario

REPO = Path(__file__).resolve().parents[1]


def test_defaults_validate() -> None:
    s = Scenario()
    assert s.model.top_k <= s.model.num_experts
    assert s.protocol.name == "fedmoe"


def test_extends_and_set_override(tmp_path: Path) -> None:
    (tmp_path / "base.yaml").write_text("run: {name: base, seed: 3}\nmodel: {num_experts: 6, top_k: 2}\n")
    (tmp_path / "child.yaml").write_text("extends: base.yaml\nrun: {name: child}\nchannel: {bandwidth_up_hz: 5e6}\n")
    ld = load_scenario(tmp_path / "child.yaml", ["model.num_experts=8", "protocol.fedmoe.alignment.w_u=0.25"], seed=11)
    s = ld.scenario
    assert s.run.name == "child"  # child overrides
    assert s.run.seed == 11  # --seed wins
    assert s.model.num_experts == 8 and s.model.top_k == 2  # --set on top of inherited
    assert s.channel.bandwidth_up_hz == 5e6  # 5e6 read as a float, not a string
    assert s.protocol.fedmoe.alignment.w_u == 0.25


def test_parse_overrides_types() -> None:
    assert parse_overrides(["a.b=1", "c=1e9", "d=true", "e=[1, 2]", "f=hello"]) == [
        ("a.b", 1), ("c", 1e9), ("d", True), ("e", [1, 2]), ("f", "hello"),
    ]
    with pytest.raises(ScenarioError):
        parse_overrides(["novalue"])


def test_error_is_one_line_with_location(tmp_path: Path) -> None:
    p = tmp_path / "s.yaml"
    p.write_text("run:\n  name: ok\n\ndata:\n  alpha: -1\n")
    with pytest.raises(ScenarioError) as ei:
        load_scenario(p)
    msg = str(ei.value)
    assert msg.startswith(f"{p}:5: data.alpha: ")
    assert "\n" not in msg


def test_default_scenario_loads() -> None:
    ld = load_scenario(REPO / "scenarios" / "smart-city-small.yaml")
    assert ld.scenario.data.dataset == "digits"
    assert ld.scenario.model.num_experts == 4


def test_defaults_reference_roundtrips_and_documents_every_key() -> None:
    import yaml

    from fedsim.config.loader import _Loader
    from fedsim.config.reference import defaults_yaml

    text = defaults_yaml()
    assert Scenario.model_validate(yaml.load(text, Loader=_Loader)) == Scenario()

    def walk(model: type) -> None:
        for name, field in model.model_fields.items():
            sub = field.annotation
            if isinstance(sub, type) and hasattr(sub, "model_fields"):
                walk(sub)
            else:
                assert field.description or name in ("grid",), f"{model.__name__}.{name} has no description"

    for section in Scenario.model_fields.values():
        walk(section.annotation)
