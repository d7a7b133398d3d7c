"""Learning layer of fedsim: datasets, partitions, the MoE model, local training,
aggregation, FLOP / byte / memory accounting, metrics and training executors.

Import from the submodules (``fedsim.learning.training`` ...) or from here.
"""

from fedsim.learning.accounting import (
    flops_per_sample,
    payload_bytes,
    state_bytes,
    training_memory_bytes,
)
from fedsim.learning.aggregation import AggregationResult, aggregate
from fedsim.learning.datasets import Dataset, DatasetError, load_dataset
from fedsim.learning.executors import Executor, SequentialExecutor
from fedsim.learning.metrics import evaluate, personalised_accuracy
from fedsim.learning.models import MoEClassifier, MoEConfig, MoEOutput, expert_keys, shared_keys
from fedsim.learning.partition import ClientSplit, label_histograms, partition
from fedsim.learning.training import TrainConfig, TrainJob, Update, init_state, train_local

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
    "partition",
    "payload_bytes",
    "personalised_accuracy",
    "shared_keys",
    "state_bytes",
    "train_local",
    "training_memory_bytes",
]
