"""Client mobility: vectorised waypoint movement on streets, sidewalks and in the air.

- ``"street"`` (vehicles): random walk over the intersections of the
  Manhattan street grid, at a speed drawn uniformly per leg.
- ``"walk"`` (pedestrians): the same on a lattice shifted sideways by the
  walker's own sidewalk offset, at walking speed.
- ``"highway"`` (vehicles on a highway): along the grid's long (x) axis on
  the client's own road (the nearest street row), one intersection per leg,
  turning back at the ends of the road.
- ``"fly"`` (drones): 3D random waypoint over the area, altitude within
  the class's range.
- ``"static"``: never moves.

Without a street grid (explicit / GraphML topologies) street and walk
clients fall back to 2D random waypoint over the bounding box of the nodes.
A step that overshoots a waypoint stops at it (the remainder of the step is
dropped: error at most one step length per leg).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["Mobility"]


class Mobility:
    """Movement state of all clients; :meth:`step` advances the moving ones in place.

    Args:
        pos: (N, 3) positions in metres, modified in place.
        modes: per client ``"static" | "street" | "walk" | "fly"``.
        speed_mps: per client (min, max) speed.
        altitude_m: per client (min, max) altitude (drones).
        streets: ``{"blocks_x", "blocks_y", "block_m"}`` or None.
        bbox: (xmin, ymin, xmax, ymax) of the area.
        rng: the ``"mobility"`` stream.
    """

    def __init__(self, pos: NDArray[np.float64], modes: Sequence[str],
                 speed_mps: Sequence[tuple[float, float]], altitude_m: Sequence[tuple[float, float]],
                 streets: dict[str, Any] | None, bbox: tuple[float, float, float, float],
                 rng: np.random.Generator) -> None:
        self.pos = pos
        self.rng = rng
        self.streets = streets
        self.bbox = bbox
        n = len(modes)
        self.modes = list(modes)
        self.vmin = np.array([s[0] for s in speed_mps], dtype=float).reshape(n)
        self.vmax = np.array([s[1] for s in speed_mps], dtype=float).reshape(n)
        self.zmin = np.array([a[0] for a in altitude_m], dtype=float).reshape(n)
        self.zmax = np.array([a[1] for a in altitude_m], dtype=float).reshape(n)
        self.mobile = np.array([i for i, m in enumerate(modes) if m != "static" and self.vmax[i] > 0],
                               dtype=np.int64)
        self.target = pos.copy()
        self.speed = np.zeros(n)
        self.grid_tgt = np.zeros((n, 2), dtype=np.int64)
        self.grid_prev = np.full((n, 2), -1, dtype=np.int64)
        self.offset = np.zeros(n)
        self.heading = np.ones(n, dtype=np.int64)
        for i in self.mobile.tolist():
            self._init_client(i)

    # -- waypoints -----------------------------------------------------------
    def _on_grid(self, i: int) -> bool:
        return self.streets is not None and self.modes[i] in ("street", "walk", "highway")

    def _init_client(self, i: int) -> None:
        if self._on_grid(i):
            assert self.streets is not None
            b = float(self.streets["block_m"])
            bx, by = int(self.streets["blocks_x"]), int(self.streets["blocks_y"])
            x, y = float(self.pos[i, 0]), float(self.pos[i, 1])
            ry, rx = round(y / b), round(x / b)
            if self.modes[i] == "highway":  # onto its road, heading either way
                self.pos[i, 1] = min(max(ry, 0), by) * b
                lo = min(max(int(np.floor(x / b)), 0), bx - 1)
                pick = int(self.rng.integers(0, 2))
                self.heading[i] = 1 if pick else -1
                self.grid_tgt[i] = (lo + pick, min(max(ry, 0), by))
            elif abs(y - ry * b) <= abs(x - rx * b):  # on a horizontal street
                self.offset[i] = y - ry * b if self.modes[i] == "walk" else 0.0
                lo = min(max(int(np.floor(x / b)), 0), bx - 1)
                ix = lo + int(self.rng.integers(0, 2))
                self.grid_tgt[i] = (ix, min(max(ry, 0), by))
            else:
                self.offset[i] = x - rx * b if self.modes[i] == "walk" else 0.0
                lo = min(max(int(np.floor(y / b)), 0), by - 1)
                iy = lo + int(self.rng.integers(0, 2))
                self.grid_tgt[i] = (min(max(rx, 0), bx), iy)
            self._set_grid_target(i)
        else:
            self._new_waypoint(i)

    def _set_grid_target(self, i: int) -> None:
        assert self.streets is not None
        b = float(self.streets["block_m"])
        ix, iy = self.grid_tgt[i]
        off = self.offset[i]
        self.target[i] = (ix * b + off, iy * b + off, self.pos[i, 2])
        self.speed[i] = self.rng.uniform(self.vmin[i], self.vmax[i])

    def _next_grid(self, i: int) -> None:
        assert self.streets is not None
        bx, by = int(self.streets["blocks_x"]), int(self.streets["blocks_y"])
        ix, iy = (int(v) for v in self.grid_tgt[i])
        if self.modes[i] == "highway":
            if not 0 <= ix + self.heading[i] <= bx:
                self.heading[i] = -self.heading[i]  # end of the road: turn back
            self.grid_prev[i] = (ix, iy)
            self.grid_tgt[i] = (ix + self.heading[i], iy)
            self._set_grid_target(i)
            return
        cand = [(ix + dx, iy + dy) for dx, dy in ((1, 0), (-1, 0), (0, 1), (0, -1))
                if 0 <= ix + dx <= bx and 0 <= iy + dy <= by]
        prev = (int(self.grid_prev[i, 0]), int(self.grid_prev[i, 1]))
        if len(cand) > 1 and prev in cand:
            cand.remove(prev)
        self.grid_prev[i] = (ix, iy)
        self.grid_tgt[i] = cand[int(self.rng.integers(0, len(cand)))]
        self._set_grid_target(i)

    def _new_waypoint(self, i: int) -> None:
        x0, y0, x1, y1 = self.bbox
        z = (self.rng.uniform(self.zmin[i], self.zmax[i]) if self.modes[i] == "fly"
             else self.pos[i, 2])
        self.target[i] = (self.rng.uniform(x0, x1), self.rng.uniform(y0, y1), z)
        self.speed[i] = self.rng.uniform(self.vmin[i], self.vmax[i])

    # -- movement ------------------------------------------------------------
    def step(self, dt_s: float) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
        """Advance every moving client by ``dt_s`` seconds.

        Returns (indices of the clients that moved, distance each moved in m).
        """
        idx = self.mobile
        if idx.size == 0:
            return idx, np.zeros(0)
        p = self.pos[idx]
        vec = self.target[idx] - p
        dist = np.sqrt((vec * vec).sum(axis=1))
        stride = self.speed[idx] * dt_s
        arrived = dist <= stride
        frac = np.where(arrived, 1.0, stride / np.maximum(dist, 1e-12))
        moved = np.minimum(dist, stride)
        self.pos[idx] = p + vec * frac[:, None]
        for i in idx[arrived].tolist():
            if self._on_grid(i):
                self._next_grid(i)
            else:
                self._new_waypoint(i)
        return idx, moved
