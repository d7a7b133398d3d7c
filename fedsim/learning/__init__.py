"""Learning layer of fedsim: datasets, partitions, the MoE model, local training,
aggregation, FLOP / byte / memory accounting, metrics and training executors.

Import from the submodules (``fedsim.learning.training`` ...) or from here.
"""

from importlib import import_module
from typing import Any

# eager: the function ``partition`` shares its name with its submodule (numpy only, cheap)
from fedsim.learning.partition import ClientSplit, label_histograms, partition

# name -> submodule: imported on first use (PEP 562), so that importing one
# submodule (a training worker, ``fedsim validate``) does not pay for all of them
_WHERE = {
    "flops_per_sample": "accounting",
    "payload_bytes": "accounting",
    "state_bytes": "accounting",
    "training_memory_bytes": "accounting",
    "AggregationResult": "aggregation",
    "aggregate": "aggregation",
    "Dataset": "datasets",
    "DatasetError": "datasets",
    "load_dataset": "datasets",
    "Executor": "executors",
    "SequentialExecutor": "executors",
    "make_executor": "executor_registry",
    "evaluate": "metrics",
    "personalised_accuracy": "metrics",
    "MoEClassifier": "models",
    "MoEConfig": "models",
    "MoEOutput": "models",
    "expert_keys": "models",
    "shared_keys": "models",
    "TrainConfig": "training",
    "TrainJob": "training",
    "Update": "training",
    "init_state": "training",
    "train_local": "training",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(import_module(f"fedsim.learning.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'fedsim.learning' has no attribute {name!r}")


__all__ = [
    "AggregationResult",
    "ClientSplit",
    "Dataset",
    "DatasetError",
    "Executor",
    "MoEClassifier",
    "MoEConfig",
    "MoEOutput",
    "SequentialExecutor",
    "TrainConfig",
    "TrainJob",
    "Update",
    "aggregate",
    "evaluate",
    "expert_keys",
    "flops_per_sample",
    "init_state",
    "label_histograms",
    "load_dataset",
    "make_executor",
    "partition",
    "payload_bytes",
    "personalised_accuracy",
    "shared_keys",
    "state_bytes",
    "train_local",
    "training_memory_bytes",
]
