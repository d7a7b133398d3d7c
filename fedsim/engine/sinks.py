"""Live metric sinks: per-round metrics written while the run goes on.

:class:`TensorBoardSink` (``output.tensorboard: true``) writes TensorBoard
event files into ``RUN_DIR/tensorboard`` with tensorboardX's
``SummaryWriter``, so a long run, or every run of a sweep
(``tensorboard --logdir SWEEP_DIR``), can be watched live. For each finished
round it writes, from that round's ``rounds`` row:

- against the round number (step = round): ``by_round/accuracy``,
  ``by_round/sim_time_s`` (simulated time at the round's end),
  ``by_round/bytes_up``, ``by_round/bytes_down``, ``by_round/stragglers``,
  ``by_round/dropouts``;
- against simulated time (step = round end in simulated milliseconds,
  TensorBoard steps being integers): ``by_sim_time_ms/accuracy``,
  ``by_sim_time_ms/bytes_total``, ``by_sim_time_ms/stragglers``,
  ``by_sim_time_ms/round``.

Rounds without an evaluation (NaN accuracy) get no accuracy point. The sink
only reads rows the protocol already recorded: it changes no simulated
quantity, and the run's tables are identical with or without it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

__all__ = ["TensorBoardSink"]

_BY_ROUND = (("accuracy", "accuracy"), ("sim_time_s", "t_end_s"), ("bytes_up", "bytes_up"),
             ("bytes_down", "bytes_down"), ("stragglers", "stragglers"), ("dropouts", "dropouts"))


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


class TensorBoardSink:
    """Writes each new ``rounds`` row as TensorBoard scalars.

    Args:
        log_dir: directory of the event files (created).

    Raises:
        ImportError: when tensorboardX is not installed (a dependency of fedsim).
    """

    def __init__(self, log_dir: str | Path) -> None:
        from tensorboardX import SummaryWriter

        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._writer = SummaryWriter(logdir=str(self.log_dir), flush_secs=10)
        self._done = 0

    def update(self, rows: list[dict[str, Any]]) -> int:
        """Write the rows of ``rows`` not written yet (``rows`` only ever grows); return how many."""
        new = rows[self._done:]
        w = self._writer
        for row in new:
            rnd = int(row.get("round", self._done))
            for tag, col in _BY_ROUND:
                v = _num(row.get(col))
                if v is not None:
                    w.add_scalar(f"by_round/{tag}", v, global_step=rnd)
            t = _num(row.get("t_end_s"))
            if t is not None:
                step = int(round(t * 1000.0))
                up, down = _num(row.get("bytes_up")) or 0.0, _num(row.get("bytes_down")) or 0.0
                acc = _num(row.get("accuracy"))
                if acc is not None:
                    w.add_scalar("by_sim_time_ms/accuracy", acc, global_step=step)
                w.add_scalar("by_sim_time_ms/bytes_total", up + down, global_step=step)
                st = _num(row.get("stragglers"))
                if st is not None:
                    w.add_scalar("by_sim_time_ms/stragglers", st, global_step=step)
                w.add_scalar("by_sim_time_ms/round", float(rnd), global_step=step)
            self._done += 1
        if new:
            w.flush()
        return len(new)

    def close(self) -> None:
        """Flush and close the event file."""
        self._writer.close()
