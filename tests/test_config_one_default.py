"""One home per default: the layers' parameter classes take the scenario schema's defaults.

``ChannelParams`` mirrors ``channel``, ``MoEConfig`` the ``model`` section, ``TrainConfig``
``training`` and ``NetworkParams`` two keys of ``devices`` / ``output``; before they took
their defaults from the schema they disagreed (attachment downlink vs uplink, top_k 1 vs 2,
momentum 0 vs 0.9, link sampling 10 s vs 5 s), so code building a layer object directly
ran another model than a scenario that left the key out."""

from __future__ import annotations

import dataclasses

import pytest

from fedsim.config.schema import (
    ChannelConfig,
    DevicesConfig,
    ModelConfig,
    OutputConfig,
    TrainingConfig,
    defaults_of,
)
from fedsim.learning.models import MoEConfig
from fedsim.learning.training import TrainConfig
from fedsim.net.params import ChannelParams, NetworkParams

# keys whose layer meaning differs from the schema's: the schema's "auto" device is resolved
# by the builder; TrainConfig.device is the resolved one
_DIFFERENT_MEANING = {(TrainConfig, "device")}


@pytest.mark.parametrize(("layer", "section"), [(ChannelParams, ChannelConfig), (MoEConfig, ModelConfig),
                                                (TrainConfig, TrainingConfig)],
                         ids=["channel", "model", "training"])
def test_layer_defaults_are_the_schemas(layer: type, section: type) -> None:
    schema = defaults_of(section)
    fields = {f.name: f.default for f in dataclasses.fields(layer)}
    shared = sorted(k for k in fields if k in schema and (layer, k) not in _DIFFERENT_MEANING)
    assert shared
    assert {k: fields[k] for k in shared} == {k: schema[k] for k in shared}


def test_derived_defaults_follow_the_schema() -> None:
    assert MoEConfig((4,), 3).widths == (defaults_of(ModelConfig)["hidden"],)  # mlp stem: one layer
    assert ChannelParams() == ChannelParams(**ChannelConfig().model_dump())
    p = NetworkParams()
    assert p.mobility_interval_s == defaults_of(DevicesConfig)["mobility_interval_s"]
    assert p.link_sample_interval_s == defaults_of(OutputConfig)["link_sample_s"]
