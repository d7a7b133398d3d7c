"""What a sweep is: the grid and seed syntax, run names, sweep files and :class:`SweepSpec`."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedsim.config import ScenarioError
from fedsim.config.loader import parse_overrides

__all__ = [
    "SweepSpec",
    "parse_grid",
    "parse_seeds",
    "grid_cells",
    "run_names",
    "is_sweep_file",
    "load_sweep_file",
    "value_json",
]

_SAFE = re.compile(r"[^A-Za-z0-9._+-]")
_SWEEP_KEYS = ("scenario", "grid", "seeds", "set", "out", "workers", "backend", "ray_address")


# ---------------------------------------------------------------------------
# parsing


def _split_top_level(text: str) -> list[str]:
    """Split at commas outside brackets, braces and quotes (``[1,2],{a: 1}`` is two items)."""
    items: list[str] = []
    depth = 0
    quote: str | None = None
    cur: list[str] = []
    for ch in text:
        if quote:
            cur.append(ch)
            if ch == quote:
                quote = None
            continue
        if ch in "'\"":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
            if depth < 0:
                raise ScenarioError(f"unbalanced {ch!r} in {text!r}", file="--grid")
        if ch == "," and depth == 0:
            items.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if depth != 0 or quote:
        raise ScenarioError(f"unbalanced brackets or quotes in {text!r}", file="--grid")
    items.append("".join(cur))
    return items


def parse_grid(items: Sequence[str] | None) -> dict[str, list[Any]]:
    """Parse ``--grid KEY=V1,V2,...`` strings into an ordered ``{key: [values]}``.

    Values are split at top-level commas (commas inside ``[]``, ``{}`` or
    quotes do not split) and each is read as a YAML scalar exactly like
    ``--set`` (``0.5`` is a float, ``true`` a bool, ``[1,2]`` a list).

    Raises:
        ScenarioError: (``file="--grid"``) on a missing ``=``, an empty key or
            value, a key given twice, duplicate values of one key, or
            unbalanced brackets.
    """
    grid: dict[str, list[Any]] = {}
    for item in items or []:
        if "=" not in item:
            raise ScenarioError(f"grid {item!r} must look like key.path=v1,v2,...", file="--grid")
        key, _, values = item.partition("=")
        key = key.strip()
        if not key or any(not p.strip() for p in key.split(".")):
            raise ScenarioError(f"grid {item!r} has an empty key", file="--grid")
        if key in grid:
            raise ScenarioError(f"grid key {key!r} given twice", file="--grid", key=key)
        raw = _split_top_level(values)
        if any(not r.strip() for r in raw):
            raise ScenarioError(f"grid {item!r} has an empty value", file="--grid", key=key)
        vals = [v for _, v in parse_overrides([f"{key}={r.strip()}" for r in raw])]
        grid[key] = _check_values(key, vals, "--grid")
    return grid


def _check_values(key: str, vals: list[Any], file: str) -> list[Any]:
    if not vals:
        raise ScenarioError("grid key has no values", file=file, key=key)
    seen = [value_json(v) for v in vals]
    if len(set(seen)) != len(seen):
        raise ScenarioError(f"grid key has duplicate values {vals!r}", file=file, key=key)
    return vals


def parse_seeds(spec: str | int | Sequence[int]) -> list[int]:
    """Parse a seed list: ``"7"``, ``"0-4"`` (inclusive), ``"1,3,5"``, ``"0-2,9"``, an int or a list of ints.

    Raises:
        ScenarioError: (``file="--seeds"``) on a non-integer, negative,
            reversed range (``"4-0"``) or repeated seed.
    """
    seeds: list[int] = []
    if isinstance(spec, bool):
        raise ScenarioError(f"seeds must be integers, got {spec!r}", file="--seeds")
    if isinstance(spec, int):
        seeds = [spec]
    elif isinstance(spec, str):
        if not spec.strip():
            raise ScenarioError("empty seed list", file="--seeds")
        for part in spec.split(","):
            part = part.strip()
            m = re.fullmatch(r"(\d+)\s*-\s*(\d+)", part)
            if m:
                lo, hi = int(m.group(1)), int(m.group(2))
                if hi < lo:
                    raise ScenarioError(f"seed range {part!r} runs backwards", file="--seeds")
                seeds.extend(range(lo, hi + 1))
            elif re.fullmatch(r"\d+", part):
                seeds.append(int(part))
            else:
                raise ScenarioError(
                    f"bad seed {part!r} (expected N, A-B or a comma list of them)", file="--seeds"
                )
    else:
        for s in spec:
            if isinstance(s, bool) or not isinstance(s, int):
                raise ScenarioError(f"seeds must be integers, got {s!r}", file="--seeds")
            seeds.append(s)
    if not seeds:
        raise ScenarioError("empty seed list", file="--seeds")
    if any(s < 0 for s in seeds):
        raise ScenarioError(f"seeds must be >= 0, got {seeds!r}", file="--seeds")
    if len(set(seeds)) != len(seeds):
        raise ScenarioError(f"repeated seed in {spec!r}", file="--seeds")
    return seeds


def value_json(v: Any) -> str:
    """Canonical text of a grid value, readable back by the YAML loader of ``--set``."""
    if isinstance(v, float) and not math.isfinite(v):
        return ".nan" if math.isnan(v) else (".inf" if v > 0 else "-.inf")
    return json.dumps(v, sort_keys=True, separators=(",", ":"))


def _value_label(v: Any) -> str:
    """Filesystem-safe text of a grid value (a short hash is added when text had to be altered)."""
    if isinstance(v, bool):
        text = "true" if v else "false"
    elif v is None:
        text = "null"
    elif isinstance(v, int | float | str):
        text = str(v)
    else:
        text = value_json(v)
    safe = re.sub(r"_{2,}", "_", _SAFE.sub("_", text)).strip("_")[:40]
    if safe != text or not safe:
        safe = f"{safe}-{hashlib.sha1(value_json(v).encode()).hexdigest()[:6]}"
    return safe


def _short_keys(keys: Sequence[str]) -> dict[str, str]:
    """Shortest unique dotted suffix of each key (``alignment.params.w_u`` -> ``w_u``)."""
    parts = {k: k.split(".") for k in keys}
    n = dict.fromkeys(keys, 1)
    while True:
        short = {k: ".".join(parts[k][-n[k] :]) for k in keys}
        clash = {
            k
            for k in keys
            if sum(1 for j in keys if short[j] == short[k]) > 1 or short[k] == "seed"
        }
        grow = {k for k in clash if n[k] < len(parts[k])}
        if not grow:
            return {k: _SAFE.sub("_", s) for k, s in short.items()}
        for k in grow:
            n[k] += 1


def grid_cells(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """The cells of ``grid``: the Cartesian product in key order, last key varying fastest."""
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def run_names(grid: dict[str, list[Any]], seeds: Sequence[int]) -> list[str]:
    """Run directory names, ordered by cell then seed: ``short=value__...__seed=N``.

    Short names are the last dotted component of each key, lengthened to the
    shortest unique suffix where two keys would clash. Deterministic and
    filesystem safe.

    Raises:
        ScenarioError: (``file="--grid"``) two cells would get the same name.
    """
    short = _short_keys(list(grid))
    names = []
    for cell in grid_cells(grid):
        stem = "__".join(f"{short[k]}={_value_label(v)}" for k, v in cell.items())
        for s in seeds:
            names.append(f"{stem}__seed={s}" if stem else f"seed={s}")
    if len(set(names)) != len(names):  # only possible via pathological values
        raise ScenarioError("grid values give clashing run names", file="--grid")
    return names


# ---------------------------------------------------------------------------
# the sweep specification


@dataclass
class SweepSpec:
    """What to sweep.

    Attributes:
        scenario: the scenario file.
        grid: ``{dotted key: [values]}``; cells are the product, in key order.
        seeds: seeds run for every cell.
        overrides: ``key=value`` strings applied to every run (as ``--set``)
            before the grid values.
        out: the sweep directory.
    """

    scenario: str | Path
    grid: dict[str, list[Any]]
    seeds: list[int]
    out: str | Path
    overrides: list[str] = field(default_factory=list)


def is_sweep_file(path: str | Path) -> bool:
    """True if ``path`` is a YAML mapping with a top-level ``grid`` key (a sweep file, not a scenario)."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and "grid" in data


def load_sweep_file(path: str | Path) -> dict[str, Any]:
    """Read a sweep YAML file into keyword fields (``scenario``, ``grid``, ``seeds``, ``set``, ``out``, ``workers``, ``backend``, ``ray_address``).

    ``scenario`` is resolved relative to the sweep file's directory; ``out``
    relative to the current directory (like ``--out``). ``grid`` is a mapping
    of dotted keys to a list of values (a scalar means one value); ``seeds``
    an int, a list or a string like ``"0-4"``; ``set`` a list of
    ``key=value`` strings or a mapping.

    Raises:
        ScenarioError: naming the file and key on any problem.
    """
    import yaml

    p = Path(path)
    fname = str(p)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise ScenarioError(f"cannot read sweep file: {e.strerror or e}", file=fname) from None
    except yaml.YAMLError as e:
        raise ScenarioError(f"invalid YAML: {' '.join(str(e).split())}", file=fname) from None
    if not isinstance(data, dict) or "grid" not in data:
        raise ScenarioError("a sweep file is a mapping with a top-level 'grid' key", file=fname)
    unknown = [k for k in data if k not in _SWEEP_KEYS]
    if unknown:
        raise ScenarioError(
            f"unknown key (allowed: {', '.join(_SWEEP_KEYS)})", file=fname, key=str(unknown[0])
        )
    out: dict[str, Any] = {}
    if "scenario" not in data or not isinstance(data["scenario"], str):
        raise ScenarioError("required: path to the scenario file", file=fname, key="scenario")
    sc = Path(data["scenario"]).expanduser()
    out["scenario"] = str(sc if sc.is_absolute() else p.parent / sc)
    grid = data["grid"]
    if not isinstance(grid, dict) or not grid:
        raise ScenarioError("must map dotted keys to lists of values", file=fname, key="grid")
    g: dict[str, list[Any]] = {}
    for k, v in grid.items():
        vals = list(v) if isinstance(v, list) else [v]
        g[str(k)] = _check_values(f"grid.{k}", vals, fname)
    out["grid"] = g
    if "seeds" in data:
        try:
            out["seeds"] = parse_seeds(data["seeds"])
        except ScenarioError as e:
            raise ScenarioError(e.rule, file=fname, key="seeds") from None
    sets = data.get("set") or []
    if isinstance(sets, dict):
        sets = [f"{k}={value_json(v)}" for k, v in sets.items()]
    if not isinstance(sets, list) or not all(isinstance(s, str) for s in sets):
        raise ScenarioError(
            "must be a list of key=value strings or a mapping", file=fname, key="set"
        )
    out["set"] = list(sets)
    for k in ("out", "backend", "ray_address"):
        if data.get(k) is not None:
            out[k] = str(data[k])
    if data.get("workers") is not None:
        w = data["workers"]
        if isinstance(w, bool) or not isinstance(w, int) or w < 1:
            raise ScenarioError(f"must be an integer >= 1, got {w!r}", file=fname, key="workers")
        out["workers"] = w
    return out
