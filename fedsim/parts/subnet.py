"""Capacity-sized sub-networks of a ``fedmoe`` run (``protocol.fedmoe.expert_widths``).

:class:`Subnetworks` gives each dispatched client an expert width ratio from the
server's capacity *estimates* of its memory and compute (the widest ratio whose
training memory with one expert fits and whose round with one expert is predicted
to end before the deadline, :func:`fedsim.learning.subnet.choose_width`), and
the :class:`~fedsim.parts.alignment.Accounting` of that width, so the bytes sent,
the FLOPs charged to the client's compute and the memory checked against its
device are those of the sub-network it trains (HeteroFL, Diao et al., ICLR 2021).
The width is fixed when the client is assigned and read back when its job is
built and its feedback applied.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fedsim.parts.alignment import Accounting

__all__ = ["Subnetworks"]


class Subnetworks:
    """Width ratios, their accounting, and the width of each assigned client.

    Args:
        trainer: the run's :class:`~fedsim.parts.learning.Trainer` (model config, training settings).
        ratios: width ratios in (0, 1] (``protocol.fedmoe.expert_widths``).

    Raises:
        ValueError: no ratio, a ratio outside (0, 1], or a linear expert head.
    """

    def __init__(self, trainer: Any, ratios: Sequence[float]) -> None:
        from fedsim.learning.subnet import expert_hidden_at

        if not ratios:
            raise ValueError('"expert_widths" must name at least one width ratio')
        self.ratios = tuple(sorted(set(float(r) for r in ratios), reverse=True))
        for r in self.ratios:
            expert_hidden_at(trainer.model_config, r)  # validates the ratio and the expert head
        self.acct: dict[float, Accounting] = {r: trainer.width_accounting(r) for r in self.ratios}
        self.width: dict[str, float] = {}

    def assign_width(self, c: str, est: Any, num_samples: int | None = None, deadline_s: float | None = None,
                     margin: float = 0.0) -> float:
        """Fix client ``c``'s width from the estimate ``est`` and return it: the widest ratio whose
        training memory with one expert fits ``est.memory_bytes`` and, when ``deadline_s`` is
        given, whose round with one expert over ``num_samples`` samples is predicted to end
        within ``deadline_s * (1 - margin)`` (:func:`fedsim.alignment.capacity.predicted_time`);
        see :func:`fedsim.learning.subnet.choose_width`."""
        from fedsim.learning.subnet import choose_width

        on_time = None
        if deadline_s is not None:
            def on_time(q: float) -> bool:
                return self.predicted_s(q, est, int(num_samples or 0)) <= deadline_s * (1.0 - margin)

        r = choose_width(self.ratios, float(est.memory_bytes), lambda q: self.acct[q].memory_bytes(1), on_time)
        self.width[c] = r
        return r

    def predicted_s(self, ratio: float, est: Any, num_samples: int) -> float:
        """Predicted round time (s) with one expert of width ``ratio`` over ``num_samples`` samples."""
        from fedsim.alignment.capacity import predicted_time

        a = self.acct[ratio]
        return predicted_time(est, 1, bytes_shared=a.bytes_shared, bytes_per_expert=a.bytes_per_expert,
                              flops_shared=a.epochs * num_samples * a.flops_shared_per_sample,
                              flops_per_expert=a.epochs * num_samples * a.flops_expert_per_sample)

    def fit_budget(self, c: str, est: Any, k: int) -> int:
        """``k`` lowered to the most experts whose exact training memory at ``c``'s width fits
        ``est.memory_bytes`` (the budget's linear memory model underestimates k = 2..top_k,
        where the activations grow too); at least 1 when one expert fits, else 0."""
        acct = self.accounting(c)
        while k > 0 and acct.memory_bytes(k) > float(est.memory_bytes):
            k -= 1
        return k

    def accounting(self, c: str) -> Accounting:
        """The accounting of client ``c``'s width (set by :meth:`assign_width`)."""
        return self.acct[self.width[c]]
