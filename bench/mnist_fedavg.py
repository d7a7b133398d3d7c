"""Plain FedAvg on the shared MNIST set: one expert, 10 IID clients, 20 rounds.

The shared folder holds only the MNIST t10k set (10,000 images); ``load_dataset``
splits it 80 / 20 into a training pool and a global test set with the
``data`` stream. The pool is split IID among 10 clients (each keeps 20 % of its
share as its own test split). Each round every client trains 1 local epoch
(SGD, lr 0.05, momentum 0.9, batch 32) of a small CNN with a single expert head,
and the server averages the updates (``aggregate``). Prints global test
accuracy per round and the wall time.

Usage: python bench/mnist_fedavg.py [--data-dir DIR] [--rounds 20] [--seed 0]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from fedsim.learning import (
    MoEConfig,
    SequentialExecutor,
    TrainConfig,
    TrainJob,
    aggregate,
    evaluate,
    flops_per_sample,
    init_state,
    load_dataset,
    partition,
    payload_bytes,
)
from fedsim.learning.training import build_model
from fedsim.rng import RngStreams

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    t0 = time.perf_counter()
    rng = RngStreams(args.seed)
    ds = load_dataset("mnist", args.data_dir, rng=rng.fresh_numpy("data"))
    splits = partition("iid", ds.y_train.numpy(), args.clients, rng.fresh_numpy("split"))
    cfg = MoEConfig(
        input_shape=ds.input_shape,
        num_classes=ds.num_classes,
        backbone="cnn",
        widths=(16, 32),
        feature_dim=64,
        num_experts=1,
        top_k=1,
        expert_hidden=64,
        aux_loss_weight=0.0,
    )
    tc = TrainConfig(optimizer="sgd", lr=0.05, momentum=0.9, local_epochs=1, batch_size=32)
    state = init_state(cfg, rng.seed_int("init"))
    model = build_model(cfg, state)
    print(f"{ds}; {args.clients} clients x ~{splits[0].num_samples} train samples")
    print(
        f"payload {payload_bytes(state, [0])} B, "
        f"train {flops_per_sample(model, cfg.input_shape):.3g} FLOP/sample"
    )
    executor = SequentialExecutor()
    curve = []
    for rnd in range(1, args.rounds + 1):
        jobs = [
            TrainJob(
                client_id=s.client_id,
                round=rnd,
                global_state=state,
                model_config=cfg,
                experts=[0],
                x=ds.x_train[torch.as_tensor(s.train_idx)],
                y=ds.y_train[torch.as_tensor(s.train_idx)],
                train=tc,
                seed=rng.seed_int(f"client/{s.client_id}/train/{rnd}"),
            )
            for s in splits
        ]
        updates = executor.run(jobs)
        state = aggregate(state, updates, cfg.num_experts).state
        model.load_state_dict(state)
        m = evaluate(model, ds.x_test, ds.y_test)
        curve.append(m["accuracy"])
        loss = sum(u.loss_last for u in updates) / len(updates)
        print(
            f"round {rnd:2d}  acc {m['accuracy']:.4f}  f1 {m['f1']:.4f}  auc {m['auc']:.4f}  "
            f"train loss {loss:.4f}  t {time.perf_counter() - t0:6.1f}s"
        )
    print(f"best accuracy {max(curve):.4f}; wall time {time.perf_counter() - t0:.1f}s")


if __name__ == "__main__":
    main()
