"""Scenario configuration: strict schema, YAML loading with ``extends:`` and ``--set``, errors."""

from fedsim.config.errors import ScenarioError
from fedsim.config.loader import LoadedScenario, load_scenario, parse_overrides, scenario_from_dict
from fedsim.config.schema import Scenario

__all__ = ["LoadedScenario", "Scenario", "ScenarioError", "load_scenario", "parse_overrides", "scenario_from_dict"]
