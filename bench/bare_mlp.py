"""The bare PyTorch loop of the learning-speed bench, as a script a user would write (issue 32).

FedAvg of an MLP 784-128-10 over 100 IID MNIST clients, 1 local epoch, batch 32,
SGD lr 0.05, every client every round, the global model evaluated (accuracy on
the 2,000 global test images) after every round, as Flower's centralised
evaluation does. Per round, per client: build an ``nn.Sequential``, load the
global weights, train with ``torch.optim.SGD``; then average the state dicts.

The inputs are fedsim's, so that the final accuracies are comparable: the same
data split (fedsim's loader and IID partitioner, seed 0) and the same initial
weights (``init_state`` of the same model). Those helpers import only numpy and
torch. One thread (``torch.set_num_threads(1)``).

Prints ``final_acc=...`` (and, with ``--every-round``, one accuracy per round).

Usage: python bench/bare_mlp.py [--data DIR] [--rounds 20] [--clients 100] [--seed 0]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

from fedsim.learning.datasets import load_dataset
from fedsim.learning.models import MoEConfig
from fedsim.learning.partition import partition
from fedsim.learning.training import init_state
from fedsim.rng import RngStreams

# fedsim's parameter names of the same MLP (mlp backbone without feature layer, one linear expert)
NAMES = {"0.weight": "backbone.1.weight", "0.bias": "backbone.1.bias", "2.weight": "experts.0.fc2.weight", "2.bias": "experts.0.fc2.bias"}


def mlp_config() -> MoEConfig:
    """fedsim's configuration of the MLP 784-128-10."""
    return MoEConfig((1, 28, 28), 10, widths=(128,), feature_dim=128, num_experts=1, top_k=1, expert_hidden=0, aux_loss_weight=0.0, feature_layer=False)


def _default_data() -> Path:
    here = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
    return here if here.is_dir() else Path("/work/shared/data/mnist")


def fedavg_round(state: dict[str, torch.Tensor], xs: list[torch.Tensor], ys: list[torch.Tensor], r: int) -> dict[str, torch.Tensor]:
    """One FedAvg round of round ``r``: every client trains one epoch of SGD (lr 0.05, batch 32)
    from ``state``; returns the plain mean of their weights."""
    new = []
    for c, (x, y) in enumerate(zip(xs, ys)):
        model = nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))
        model.load_state_dict(state)
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        gen = torch.Generator().manual_seed(r * 1_000_003 + c)
        perm = torch.randperm(len(y), generator=gen)
        for s in range(0, len(y), 32):
            idx = perm[s : s + 32]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        new.append(model.state_dict())
    return {k: torch.stack([sd[k] for sd in new]).mean(0) for k in state}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(_default_data()), help="directory of the MNIST IDX files")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--every-round", action="store_true", help="print every round's accuracy")
    args = ap.parse_args()
    torch.set_num_threads(1)

    rng = RngStreams(args.seed)
    ds = load_dataset("mnist", Path(args.data), rng=rng.fresh_numpy("data/load"))
    splits = partition("iid", ds.y_train.numpy(), args.clients, rng.fresh_numpy("data/split"), test_fraction=0.2, num_classes=10)
    xs = [ds.x_train[torch.as_tensor(s.train_idx)].reshape(len(s.train_idx), -1) for s in splits]
    ys = [ds.y_train[torch.as_tensor(s.train_idx)] for s in splits]
    x_test, y_test = ds.x_test.reshape(len(ds.y_test), -1), ds.y_test
    init = init_state(mlp_config(), rng.seed_int("model/init"))
    state = {k: init[v].clone() for k, v in NAMES.items()}
    model = nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))
    acc = float("nan")
    for r in range(args.rounds):
        state = fedavg_round(state, xs, ys, r)
        model.load_state_dict(state)
        with torch.no_grad():
            acc = float((model(x_test).argmax(1) == y_test).float().mean())
        if args.every_round:
            print(f"round={r} accuracy={acc:.4f}", flush=True)
    print(f"final_acc={acc:.4f}")


if __name__ == "__main__":
    main()
