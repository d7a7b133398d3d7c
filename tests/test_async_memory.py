"""Async memory (issue 29, item 3): a batched executor's updates hold compact copies of
their tensors, not views of the cohort's stacked parameters. A view keeps (and pickles,
into the replay log) the whole stacked storage: one record of 24 updates pickled to
699 MB for 29 MB of tensors, and downtown-grid async peaked at 9.4 GB."""

from __future__ import annotations

import pickle

from fedsim.learning.batched import BatchedExecutor
from tests.test_learning_executors import MIXED, _jobs


def test_batched_updates_hold_compact_tensors() -> None:
    ups = BatchedExecutor().run(_jobs(next(iter(MIXED.values()))))
    own, n = 0, 0
    for u in ups:
        for k, t in u.state.items():
            assert t.untyped_storage().nbytes() == t.numel() * t.element_size(), f"client {u.client_id}: {k} is a view"
            own, n = own + t.numel() * t.element_size(), n + 1
    # what the replay log stores: the tensors' own bytes plus pickle framing (under 1 kB a tensor)
    assert len(pickle.dumps(ups, protocol=pickle.HIGHEST_PROTOCOL)) < own + 1_000 * n
