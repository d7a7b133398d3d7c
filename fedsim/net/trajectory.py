"""Client mobility as piecewise-linear trajectories evaluated when a position is needed.

The same movement models as :mod:`fedsim.net.mobility`, without a periodic
step: each moving client follows straight legs at a constant speed, and a
leg's waypoint and speed are drawn from a counter-based generator keyed by
(client, leg, purpose), so the trajectory is one fixed function of time
whatever queries are made and in whatever order. A position query at time
``t`` is exact (linear interpolation inside the current leg); a client nobody
asks about costs nothing. Legs are generated forward in time as queries
reach them (simulated time never goes back).

- ``"street"``: random walk over the intersections of the Manhattan street
  grid (no U-turn unless at a dead end), speed uniform per leg.
- ``"walk"``: the same on a lattice shifted by the walker's sidewalk offset.
- ``"highway"``: along the grid's long axis on the client's own road, one
  block per leg, turning back at the ends of the road.
- ``"fly"``: 3D random waypoint over the area within the altitude range.
- ``"static"``: never moves.

Without a street grid, street / walk / highway fall back to 2D random
waypoint over the bounding box. Odometer (distance travelled) is exact too;
it drives the shadowing decorrelation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from fedsim.rng import CounterRng

__all__ = ["Trajectories"]

_INF = float("inf")
# purposes of the keyed draws
_SPEED, _X, _Y, _Z, _TURN = 0, 1, 2, 3, 4


class Trajectories:
    """Piecewise-linear trajectories of all clients (see the module docstring).

    Args:
        pos: (N, 3) initial positions in metres (copied).
        modes: per client ``"static" | "street" | "walk" | "highway" | "fly"``.
        speed_mps: per client (min, max) speed.
        altitude_m: per client (min, max) altitude (drones).
        streets: ``{"blocks_x", "blocks_y", "block_m"}`` or None.
        bbox: (xmin, ymin, xmax, ymax) of the area.
        rng: the counter-based ``"mobility"`` stream.
    """

    def __init__(self, pos: NDArray[np.float64], modes: Sequence[str],
                 speed_mps: Sequence[tuple[float, float]], altitude_m: Sequence[tuple[float, float]],
                 streets: dict[str, Any] | None, bbox: tuple[float, float, float, float],
                 rng: CounterRng) -> None:
        n = len(modes)
        self.rng = rng
        self.streets = streets
        self.bbox = bbox
        self.modes = list(modes)
        self.vmin = np.array([s[0] for s in speed_mps], dtype=float).reshape(n)
        self.vmax = np.array([s[1] for s in speed_mps], dtype=float).reshape(n)
        self.zmin = np.array([a[0] for a in altitude_m], dtype=float).reshape(n)
        self.zmax = np.array([a[1] for a in altitude_m], dtype=float).reshape(n)
        self.p0 = np.array(pos, dtype=float).reshape(n, 3)
        self.p1 = self.p0.copy()
        self.t0 = np.zeros(n)
        self.t1 = np.full(n, _INF)
        self.odo0 = np.zeros(n)
        self.speed = np.zeros(n)
        self.leg = np.zeros(n, dtype=np.int64)
        self.grid = np.zeros((n, 2), dtype=np.int64)  # target intersection of the leg
        self.prev = np.full((n, 2), -1, dtype=np.int64)
        self.offset = np.zeros(n)
        self.heading = np.zeros(n, dtype=np.int64)  # highway: +1 / -1 along x
        self.mobile = np.array([i for i, m in enumerate(modes) if m != "static" and self.vmax[i] > 0],
                               dtype=np.int64)
        # the first leg is drawn at a client's first query (keyed draws: the same legs
        # whenever they are drawn), so a client nobody asks about costs nothing
        self._pending = np.zeros(n, dtype=bool)
        self._pending[self.mobile] = True

    # -- keyed draws ----------------------------------------------------------
    def _u(self, i: int, purpose: int) -> float:
        return float(self.rng.uniform(i, int(self.leg[i]), purpose))

    def _on_grid(self, i: int) -> bool:
        return self.streets is not None and self.modes[i] in ("street", "walk", "highway")

    # -- legs ------------------------------------------------------------------
    def _first_leg(self, i: int) -> None:
        if not self._on_grid(i):
            self._waypoint_leg(i)
            return
        assert self.streets is not None
        b = float(self.streets["block_m"])
        bx, by = int(self.streets["blocks_x"]), int(self.streets["blocks_y"])
        x, y = float(self.p0[i, 0]), float(self.p0[i, 1])
        ry, rx = round(y / b), round(x / b)
        pick = int(self._u(i, _TURN) < 0.5)
        if self.modes[i] == "highway":  # snap to its road (the nearest horizontal street)
            self.p0[i, 1] = min(max(ry, 0), by) * b
            lo = min(max(int(np.floor(x / b)), 0), bx - 1)
            self.heading[i] = 1 if pick else -1
            self.grid[i] = (lo + pick, min(max(ry, 0), by))
        elif abs(y - ry * b) <= abs(x - rx * b):  # on a horizontal street
            self.offset[i] = y - ry * b if self.modes[i] == "walk" else 0.0
            lo = min(max(int(np.floor(x / b)), 0), bx - 1)
            self.grid[i] = (lo + pick, min(max(ry, 0), by))
        else:
            self.offset[i] = x - rx * b if self.modes[i] == "walk" else 0.0
            lo = min(max(int(np.floor(y / b)), 0), by - 1)
            self.grid[i] = (min(max(rx, 0), bx), lo + pick)
        self._grid_leg(i)

    def _grid_leg(self, i: int) -> None:
        assert self.streets is not None
        b = float(self.streets["block_m"])
        off = self.offset[i]
        ix, iy = self.grid[i]
        tgt = (ix * b + off, iy * b + off, self.p0[i, 2])
        if self.modes[i] == "highway":
            tgt = (ix * b, self.p0[i, 1], self.p0[i, 2])
        self._set_leg(i, tgt)

    def _waypoint_leg(self, i: int) -> None:
        x0, y0, x1, y1 = self.bbox
        z = (self.zmin[i] + (self.zmax[i] - self.zmin[i]) * self._u(i, _Z)
             if self.modes[i] == "fly" else self.p0[i, 2])
        self._set_leg(i, (x0 + (x1 - x0) * self._u(i, _X), y0 + (y1 - y0) * self._u(i, _Y), z))

    def _set_leg(self, i: int, tgt: tuple[float, float, float]) -> None:
        v = self.vmin[i] + (self.vmax[i] - self.vmin[i]) * self._u(i, _SPEED)
        self.p1[i] = tgt
        self.speed[i] = v
        length = float(np.linalg.norm(self.p1[i] - self.p0[i]))
        self.t1[i] = self.t0[i] + length / v if v > 0 else _INF

    def _next_leg(self, i: int) -> None:
        """Start the next leg at the end of the current one."""
        length = float(np.linalg.norm(self.p1[i] - self.p0[i]))
        self.odo0[i] += length
        self.t0[i] = self.t1[i]
        self.p0[i] = self.p1[i]
        self.leg[i] += 1
        if not self._on_grid(i):
            self._waypoint_leg(i)
            return
        assert self.streets is not None
        bx, by = int(self.streets["blocks_x"]), int(self.streets["blocks_y"])
        ix, iy = (int(v) for v in self.grid[i])
        if self.modes[i] == "highway":
            if not 0 <= ix + self.heading[i] <= bx:
                self.heading[i] = -self.heading[i]  # end of the road: turn back
            self.grid[i] = (ix + self.heading[i], iy)
        else:
            cand = [(ix + dx, iy + dy) for dx, dy in ((1, 0), (-1, 0), (0, 1), (0, -1))
                    if 0 <= ix + dx <= bx and 0 <= iy + dy <= by]
            prev = (int(self.prev[i, 0]), int(self.prev[i, 1]))
            if len(cand) > 1 and prev in cand:
                cand.remove(prev)
            self.prev[i] = (ix, iy)
            self.grid[i] = cand[min(int(self._u(i, _TURN) * len(cand)), len(cand) - 1)]
        self._grid_leg(i)

    # -- queries -------------------------------------------------------------
    def positions(self, rows: NDArray[np.int64], t: float
                  ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Positions (k, 3) in m and odometers (k,) in m of ``rows`` at time ``t``.

        ``t`` must not precede an earlier query of the same rows (legs before
        the current one are not kept).
        """
        for i in rows[self._pending[rows]].tolist():
            self._pending[i] = False
            self._first_leg(i)
        for i in rows[self.t1[rows] < t].tolist():
            while self.t1[i] < t:
                self._next_leg(i)
        t0 = self.t0[rows]
        span = self.t1[rows] - t0
        moving = np.isfinite(span) & (span > 0)
        frac = np.where(moving, np.clip((t - t0) / np.where(moving, span, 1.0), 0.0, 1.0), 0.0)
        p0 = self.p0[rows]
        pos = p0 + (self.p1[rows] - p0) * frac[:, None]
        odo = self.odo0[rows] + np.where(moving, self.speed[rows] * np.maximum(t - t0, 0.0), 0.0)
        return pos, odo

    def teleport(self, i: int, p: tuple[float, float, float], t: float, odo: float) -> None:
        """Place client ``i`` at ``p`` from time ``t`` on, standing still there."""
        self._pending[i] = False
        self.p0[i] = p
        self.p1[i] = p
        self.t0[i] = t
        self.t1[i] = _INF
        self.odo0[i] = odo
