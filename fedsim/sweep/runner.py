"""Sweeps: one scenario x a grid of overrides x seeds, run on a pluggable executor.

A sweep is the Cartesian product of the values of every ``--grid KEY=V1,V2``
(in the order given), each cell run once per seed. Each run is an ordinary run
directory under the sweep directory, named from its grid values and seed
(``policy=greedy__w_u=0.5__seed=3``), and is a pure function of
``(scenario file, overrides, seed)``: results never depend on the backend,
the worker count or the completion order.

``DIR/sweep.parquet`` indexes the runs, one row per run, ordered by cell then
seed: ``run_dir`` (relative to DIR), ``seed``, one column per grid key (full
dotted name), ``status`` (``completed``, ``failed``, ``pending``), ``error``,
``wall_s`` and the headline metrics of :data:`METRICS`, read from each run's
``rounds.parquet``. It is rewritten atomically whenever a run finishes.

Resuming: running the same sweep again skips every run whose
``manifest.json`` says ``completed`` and reruns the others; a run directory
without a completed manifest (interrupted or failed) is first moved aside to
``DIR/.trash/<name>-<n>``, so a half-written run never looks complete.

Backends: ``inprocess`` (sequential, the reference), ``process`` (a
``ProcessPoolExecutor`` with the ``spawn`` start method) and ``ray`` (each run
one Ray task; ``ray.init()`` locally, or on ``--ray-address``; the sweep
directory must then be on a file system shared by every node and fedsim
installed there).

Python use::

    from fedsim.sweep import SweepSpec, run_sweep
    spec = SweepSpec(scenario="scenarios/smart-city-small.yaml",
                     grid={"alignment.policy": ["random", "greedy"]},
                     seeds=[0, 1], out="sweeps/policy")
    result = run_sweep(spec, backend="process", workers=2)
    result.index  # the sweep.parquet DataFrame
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import itertools
import json
import logging
import math
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedsim.config import LoadedScenario, ScenarioError
from fedsim.config import load_scenario as _load_scenario
from fedsim.config.loader import parse_overrides

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "BACKENDS",
    "METRICS",
    "INDEX_FILE",
    "SweepSpec",
    "RunTask",
    "RunOutcome",
    "SweepResult",
    "Runner",
    "parse_grid",
    "parse_seeds",
    "grid_cells",
    "run_names",
    "load_sweep_file",
    "is_sweep_file",
    "plan_runs",
    "execute_run",
    "headline_metrics",
    "run_sweep",
    "add_sweep_parser",
    "cmd_sweep",
]

#: Executors a sweep can run on.
BACKENDS: tuple[str, ...] = ("inprocess", "process", "ray")

#: Headline metrics in ``sweep.parquet`` (see :func:`headline_metrics`).
METRICS: tuple[str, ...] = (
    "final_accuracy",
    "best_accuracy",
    "rounds_to_target",
    "sim_s_to_target",
    "sim_s_total",
    "stragglers",
    "dropouts",
    "ooms",
    "bytes_total",
)

#: The index file of a sweep directory.
INDEX_FILE = "sweep.parquet"
#: Sweep metadata (grid keys, seeds, scenario, overrides) beside the index.
META_FILE = "sweep.json"
TRASH_DIR = ".trash"

#: A runner executes one loaded scenario into a run directory (default:
#: ``fedsim.api.run(loaded, out_dir, figures=False)``). It must be picklable
#: (a module-level function) for the ``process`` and ``ray`` backends.
Runner = Callable[[LoadedScenario, Path], Any]

_SAFE = re.compile(r"[^A-Za-z0-9._+-]")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
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
    seen = [_value_json(v) for v in vals]
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


def _value_json(v: Any) -> str:
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
        text = _value_json(v)
    safe = re.sub(r"_{2,}", "_", _SAFE.sub("_", text)).strip("_")[:40]
    if safe != text or not safe:
        safe = f"{safe}-{hashlib.sha1(_value_json(v).encode()).hexdigest()[:6]}"
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


@dataclass(frozen=True)
class RunTask:
    """One run, as shipped to a worker: plain strings only, so it pickles cheaply.

    ``overrides`` are the sweep's ``--set`` items followed by the cell's grid
    values; ``seed`` replaces ``run.seed``.
    """

    index: int
    name: str
    scenario: str
    overrides: tuple[str, ...]
    seed: int
    out_dir: str
    cell: tuple[tuple[str, Any], ...]


@dataclass
class RunOutcome:
    """What a worker reports back: ``status`` is ``completed`` or ``failed`` (with a one-line ``error``)."""

    index: int
    status: str
    error: str | None = None
    wall_s: float = math.nan
    pid: int = 0


@dataclass
class SweepResult:
    """A finished (or partly failed) sweep: its directory, index and how many runs were executed now."""

    out: Path
    index: pd.DataFrame
    executed: int
    skipped: int
    failed: int
    wall_s: float


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
        sets = [f"{k}={_value_json(v)}" for k, v in sets.items()]
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


def plan_runs(spec: SweepSpec) -> tuple[list[RunTask], list[LoadedScenario]]:
    """Expand ``spec`` into run tasks (ordered by cell then seed) and validate every one.

    Every run's scenario is loaded with :func:`fedsim.config.load_scenario`
    before anything runs, so a grid key or value the schema rejects fails
    the whole sweep up front.

    Raises:
        ScenarioError: the first invalid run's error, prefixed with its name.
    """
    if not spec.grid and not spec.seeds:
        raise ScenarioError("nothing to sweep: give --grid and/or --seeds", file="--grid")
    names = run_names(spec.grid, spec.seeds)
    out = Path(spec.out)
    tasks: list[RunTask] = []
    loaded: list[LoadedScenario] = []
    i = 0
    for cell in grid_cells(spec.grid):
        cell_ov = [f"{k}={_value_json(v)}" for k, v in cell.items()]
        for seed in spec.seeds:
            ov = (*spec.overrides, *cell_ov)
            try:
                ls = _load_scenario(spec.scenario, list(ov), seed=seed)
            except ScenarioError as e:
                hit = [
                    k
                    for k in cell
                    if e.key is not None and (e.key == k or e.key.startswith(k + "."))
                ]
                if e.file in ("--set", None) and hit:
                    raise ScenarioError(
                        f"{e.rule} (grid value {cell[hit[0]]!r})", file="--grid", key=e.key
                    ) from None
                raise
            tasks.append(
                RunTask(
                    i,
                    names[i],
                    str(Path(spec.scenario).resolve()),  # absolute: workers may run elsewhere
                    tuple(ov),
                    seed,
                    str((out / names[i]).resolve()),
                    tuple(cell.items()),
                )
            )
            loaded.append(ls)
            i += 1
    return tasks, loaded


# ---------------------------------------------------------------------------
# executing one run (in any process)


def _api_run(loaded: LoadedScenario, out_dir: Path) -> Any:
    from fedsim.api import run

    return run(loaded, out_dir, figures=False)


def _one_line(exc: BaseException) -> str:
    msg = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


def execute_run(task: RunTask, runner: Runner | None = None) -> RunOutcome:
    """Run one task: load its scenario, set torch threads, call the runner.

    The same function runs in the sweep process (``inprocess``), a spawned
    worker (``process``) or a Ray worker, so a run is a pure function of
    ``(scenario, overrides, seed)``. torch's intra-op threads are set to the
    scenario's ``training.torch_threads`` for the run (and restored after).
    An ``Exception`` from the run is reported as ``failed`` with a one-line
    error; ``KeyboardInterrupt`` and ``SystemExit`` propagate.
    """
    t0 = time.perf_counter()
    pid = os.getpid()
    try:
        loaded = _load_scenario(task.scenario, list(task.overrides), seed=task.seed)
        with _torch_threads(loaded.scenario.training.torch_threads):
            (runner or _api_run)(loaded, Path(task.out_dir))
        status = _manifest_status(Path(task.out_dir))
        if status not in (None, "completed"):
            return RunOutcome(
                task.index,
                "failed",
                f"run ended with status {status!r}",
                time.perf_counter() - t0,
                pid,
            )
        return RunOutcome(task.index, "completed", None, time.perf_counter() - t0, pid)
    except Exception as exc:  # noqa: BLE001 - a failed run is recorded, the sweep goes on
        return RunOutcome(task.index, "failed", _one_line(exc), time.perf_counter() - t0, pid)


class _torch_threads:
    """Context manager: torch intra-op threads = ``n`` inside, the previous value after."""

    def __init__(self, n: int) -> None:
        self.n = int(n)
        self.prev: int | None = None

    def __enter__(self) -> None:
        import torch

        self.prev = torch.get_num_threads()
        if self.prev != self.n:
            torch.set_num_threads(self.n)

    def __exit__(self, *exc: object) -> None:
        import torch

        if self.prev is not None and torch.get_num_threads() != self.prev:
            torch.set_num_threads(self.prev)


# ---------------------------------------------------------------------------
# the index


def _manifest(run_dir: Path) -> dict[str, Any] | None:
    try:
        m = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) else None


def _manifest_status(run_dir: Path) -> str | None:
    m = _manifest(run_dir)
    return None if m is None else str(m.get("status"))


def headline_metrics(run_dir: str | Path, target_accuracy: float | None = None) -> dict[str, float]:
    """Headline metrics of a run directory, from its ``rounds.parquet``.

    - ``final_accuracy``: accuracy of the last evaluated round; ``best_accuracy``: the maximum.
    - ``rounds_to_target``: rounds run until the first evaluated round with
      accuracy >= ``target_accuracy`` (``round + 1``); ``sim_s_to_target``:
      simulated seconds at the end of that round. NaN if never reached or
      no target.
    - ``sim_s_total``: simulated seconds at the end of the last round
      (manifest ``sim_end_s`` if there are no rounds).
    - ``stragglers``, ``dropouts``, ``ooms``: totals over rounds;
      ``bytes_total``: ``bytes_up + bytes_down`` summed over rounds.

    Missing tables or columns give NaN, never an error.
    """
    import pandas as pd

    run_dir = Path(run_dir)
    out = dict.fromkeys(METRICS, math.nan)
    try:
        r = pd.read_parquet(run_dir / "rounds.parquet")
    except Exception:  # noqa: BLE001 - a run without rounds has NaN metrics
        r = pd.DataFrame()
    if "round" in r.columns:
        r = r.sort_values("round", kind="stable")
    if "accuracy" in r.columns:
        acc = pd.to_numeric(r["accuracy"], errors="coerce").astype(float)
        ev = r[acc.notna() & (acc.abs() != math.inf)]
        evacc = acc[ev.index]
        if len(ev):
            out["final_accuracy"] = float(evacc.iloc[-1])
            out["best_accuracy"] = float(evacc.max())
            if target_accuracy is not None:
                hit = ev[evacc >= target_accuracy]
                if len(hit):
                    first = hit.iloc[0]
                    out["rounds_to_target"] = (
                        float(int(first["round"]) + 1) if "round" in hit.columns else math.nan
                    )
                    out["sim_s_to_target"] = (
                        float(first["t_end_s"]) if "t_end_s" in hit.columns else math.nan
                    )
    for col in ("stragglers", "dropouts", "ooms"):
        if col in r.columns:
            out[col] = float(r[col].sum())
    if "bytes_up" in r.columns or "bytes_down" in r.columns:
        out["bytes_total"] = float(
            sum(r[c].sum() for c in ("bytes_up", "bytes_down") if c in r.columns)
        )
    if "t_end_s" in r.columns and len(r):
        out["sim_s_total"] = float(r["t_end_s"].max())
    else:
        m = _manifest(run_dir) or {}
        if m.get("sim_end_s") is not None:
            out["sim_s_total"] = float(m["sim_end_s"])
    return out


def _grid_column(values: list[Any]) -> list[Any]:
    """Grid values as a Parquet-friendly column: numbers / bools / strings as is, else canonical JSON text."""
    kinds = set()
    for v in values:
        if isinstance(v, bool):
            kinds.add("bool")
        elif isinstance(v, int | float):
            kinds.add("num")
        elif isinstance(v, str):
            kinds.add("str")
        else:
            kinds.add("other")
    if len(kinds) == 1 and "other" not in kinds:
        return values
    return [v if isinstance(v, str) else _value_json(v) for v in values]


def _build_index(
    tasks: list[RunTask], rows: dict[int, dict[str, Any]], grid_keys: list[str]
) -> pd.DataFrame:
    import pandas as pd

    records = []
    for t in tasks:
        rec: dict[str, Any] = {"run_dir": t.name, "seed": t.seed}
        rec.update(dict(t.cell))
        base = {
            "status": "pending",
            "error": None,
            "wall_s": math.nan,
            **dict.fromkeys(METRICS, math.nan),
        }
        base.update(rows.get(t.index, {}))
        rec.update(base)
        records.append(rec)
    df = pd.DataFrame.from_records(
        records, columns=["run_dir", "seed", *grid_keys, "status", "error", "wall_s", *METRICS]
    )
    for k in grid_keys:
        df[k] = pd.Series(
            _grid_column(df[k].tolist()), dtype=object if df[k].dtype == object else df[k].dtype
        )
    df["seed"] = df["seed"].astype("int64")
    df["error"] = df["error"].astype(object)
    for m in ("wall_s", *METRICS):
        df[m] = df[m].astype(float)
    return df


# ---------------------------------------------------------------------------
# resuming


def _check_or_trash(task: RunTask, loaded: LoadedScenario, out: Path) -> bool:
    """True if ``task`` already completed; otherwise clear its directory (moving it to the trash)."""
    d = Path(task.out_dir)
    if not d.exists():
        return False
    m = _manifest(d)
    if m is not None and m.get("status") == "completed":
        recorded = m.get("scenario")
        if isinstance(recorded, dict):
            expected = json.loads(json.dumps(loaded.scenario.model_dump(mode="json"), default=str))
            if recorded != expected:
                raise ScenarioError(
                    f"run directory {task.name!r} was completed with a different scenario; "
                    "use another --out (or remove it) to run this sweep",
                    file=str(out),
                )
        return True
    trash = out / TRASH_DIR
    trash.mkdir(parents=True, exist_ok=True)
    n = 1
    while (trash / f"{task.name}-{n}").exists():
        n += 1
    shutil.move(str(d), str(trash / f"{task.name}-{n}"))
    return False


# ---------------------------------------------------------------------------
# executors: each yields RunOutcome in completion order


def _iter_inprocess(
    tasks: list[RunTask], runner: Runner | None, workers: int, ray_address: str | None
) -> Iterator[RunOutcome]:
    for t in tasks:
        yield execute_run(t, runner)


def _ignore_sigint() -> None:
    """Pool worker initializer: Ctrl-C is handled by the sweep process, which terminates the workers."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _iter_process(
    tasks: list[RunTask], runner: Runner | None, workers: int, ray_address: str | None
) -> Iterator[RunOutcome]:
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    ex = ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_ignore_sigint,
    )
    try:
        futs = {ex.submit(execute_run, t, runner): t for t in tasks}
        pending = set(futs)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for f in sorted(done, key=lambda f: futs[f].index):
                try:
                    yield f.result()
                except BrokenProcessPool as e:
                    yield RunOutcome(futs[f].index, "failed", _one_line(e) or "worker process died")
                except Exception as e:  # noqa: BLE001 - e.g. an unpicklable runner
                    yield RunOutcome(futs[f].index, "failed", _one_line(e))
    except BaseException:
        # Ctrl-C, or the consumer stopped: kill the runs in flight (their run
        # directories keep a "running" manifest and are redone on resume)
        procs = list((getattr(ex, "_processes", None) or {}).values())
        ex.shutdown(wait=False, cancel_futures=True)
        for p in procs:
            p.terminate()
        for p in procs:
            p.join(timeout=10)
        raise
    ex.shutdown(wait=True)


def _iter_ray(
    tasks: list[RunTask], runner: Runner | None, workers: int, ray_address: str | None
) -> Iterator[RunOutcome]:
    try:
        import ray
    except ImportError:
        raise ScenarioError(
            "the ray backend needs Ray: pip install 'fedsim[ray]'", file="--backend"
        ) from None
    started = False
    if not ray.is_initialized():
        kw: dict[str, Any] = {
            "include_dashboard": False,
            "logging_level": logging.WARNING,
            "log_to_driver": False,
        }
        if ray_address:
            ray.init(address=ray_address, **kw)
        else:
            ray.init(num_cpus=workers, **kw)
        started = True
    try:
        remote = ray.remote(num_cpus=1, max_retries=0)(execute_run)
        refs = {remote.remote(t, runner): t for t in tasks}
        pending = list(refs)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    try:
                        yield ray.get(ref)
                    except Exception as e:  # noqa: BLE001 - a worker crash is one failed run
                        cause = getattr(e, "cause", None)
                        msg = _ANSI.sub(
                            "", _one_line(cause if isinstance(cause, BaseException) else e)
                        )
                        yield RunOutcome(refs[ref].index, "failed", msg[:500])
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)
    finally:
        if started:
            ray.shutdown()


_EXECUTORS = {"inprocess": _iter_inprocess, "process": _iter_process, "ray": _iter_ray}


# ---------------------------------------------------------------------------
# the sweep


def run_sweep(
    spec: SweepSpec,
    *,
    backend: str = "inprocess",
    workers: int | None = None,
    ray_address: str | None = None,
    runner: Runner | None = None,
    progress: bool = False,
) -> SweepResult:
    """Run (or resume) a sweep and write its index.

    Every run is validated first (see :func:`plan_runs`). Runs already
    completed in ``spec.out`` are skipped; other existing run directories are
    moved to ``out/.trash``. ``sweep.parquet`` is rewritten atomically after
    every finished run, so a crash or Ctrl-C leaves a consistent index
    (unfinished runs ``pending``) and re-running the same call resumes.

    Args:
        backend: ``inprocess``, ``process`` or ``ray``.
        workers: parallel runs (``process`` / local ``ray``); default
            ``os.cpu_count()``. Ignored by ``inprocess``.
        ray_address: connect to this Ray cluster instead of starting one.
        runner: executes one loaded scenario into a run directory; default
            ``fedsim.api.run(loaded, out_dir, figures=False)``. Must be a
            module-level function for ``process`` / ``ray``.
        progress: show a rich progress bar counting runs.

    Returns:
        The :class:`SweepResult`; ``failed > 0`` if any run failed (the
        others still ran).

    Raises:
        ScenarioError: bad grid, seeds, backend or any invalid run scenario.
        KeyboardInterrupt: after writing the index of what finished.
    """
    if backend not in BACKENDS:
        raise ScenarioError(
            f"unknown backend {backend!r} (choose from {', '.join(BACKENDS)})", file="--backend"
        )
    if workers is not None and workers < 1:
        raise ScenarioError(f"must be >= 1, got {workers}", file="--workers")
    from fedsim.rundir import write_json, write_parquet

    workers = workers or os.cpu_count() or 1
    t0 = time.perf_counter()
    tasks, loaded = plan_runs(spec)
    out = Path(spec.out)
    out.mkdir(parents=True, exist_ok=True)
    grid_keys = list(spec.grid)
    write_json(
        out / META_FILE,
        {
            "scenario": str(spec.scenario),
            "overrides": list(spec.overrides),
            "grid": {k: [_value_json(v) for v in vals] for k, vals in spec.grid.items()},
            "grid_keys": grid_keys,
            "seeds": list(spec.seeds),
            "metrics": list(METRICS),
        },
    )
    targets = [ls.scenario.evaluation.target_accuracy for ls in loaded]

    rows: dict[int, dict[str, Any]] = {}
    todo: list[RunTask] = []
    for t, ls in zip(tasks, loaded):
        if _check_or_trash(t, ls, out):
            m = _manifest(Path(t.out_dir)) or {}
            rows[t.index] = {
                "status": "completed",
                "wall_s": float(m.get("wall_s") or math.nan),
                **headline_metrics(t.out_dir, targets[t.index]),
            }
        else:
            todo.append(t)
    skipped = len(tasks) - len(todo)
    write_parquet(out / INDEX_FILE, _build_index(tasks, rows, grid_keys))

    failed = 0
    bar = _Bar(len(tasks), skipped) if progress else None
    stack = contextlib.ExitStack()
    try:
        if todo:
            it = _EXECUTORS[backend](todo, runner, min(workers, len(todo)), ray_address)
            stack.callback(it.close)  # stop the executor now, not at garbage collection
            for res in it:
                t = tasks[res.index]
                row: dict[str, Any] = {
                    "status": res.status,
                    "error": res.error,
                    "wall_s": res.wall_s,
                }
                row.update(headline_metrics(t.out_dir, targets[t.index]))
                rows[res.index] = row
                failed += res.status != "completed"
                write_parquet(out / INDEX_FILE, _build_index(tasks, rows, grid_keys))
                if bar is not None:
                    bar.advance(t.name, res.status)
    finally:
        stack.close()
        if bar is not None:
            bar.stop()
        write_parquet(out / INDEX_FILE, _build_index(tasks, rows, grid_keys))
    index = _build_index(tasks, rows, grid_keys)
    return SweepResult(
        out,
        index,
        executed=len(todo),
        skipped=skipped,
        failed=failed,
        wall_s=time.perf_counter() - t0,
    )


class _Bar:
    """A rich progress bar counting runs (completed + failed)."""

    def __init__(self, total: int, done: int) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.prog = Progress(
            TextColumn("[bold]sweep"),
            MofNCompleteColumn(),
            BarColumn(),
            TextColumn("{task.fields[last]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        self.task = self.prog.add_task("sweep", total=total, completed=done, last="")
        self.prog.start()

    def advance(self, name: str, status: str) -> None:
        mark = "" if status == "completed" else f" [red]{status}[/red]"
        self.prog.update(self.task, advance=1, last=f"{name}{mark}")

    def stop(self) -> None:
        self.prog.stop()


# ---------------------------------------------------------------------------
# the command


def add_sweep_parser(subparsers: Any) -> None:
    """Add ``fedsim sweep`` to the ``fedsim`` command's subparsers."""
    s = subparsers.add_parser(
        "sweep",
        help="run a scenario over a grid of overrides x seeds (resumable)",
        description="Run SCENARIO for every cell of the --grid product and every seed; "
        "SCENARIO may instead be a sweep file (YAML with a top-level 'grid' key). "
        "Re-running the same command resumes: completed runs are skipped.",
    )
    s.add_argument(
        "scenario",
        help="scenario file, or a sweep file (top-level keys scenario, grid, seeds, set, out, workers, backend)",
    )
    s.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="KEY=V1,V2,...",
        help="a swept key and its values (YAML scalars, as --set); repeat for a product",
    )
    s.add_argument(
        "--seeds",
        default=None,
        help="seeds per cell: '0-4', '1,3,5' or '7' (default: the scenario's run.seed)",
    )
    s.add_argument(
        "--out", default=None, help="sweep directory (required unless the sweep file sets out)"
    )
    s.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a scenario key in every run",
    )
    s.add_argument(
        "--workers", type=int, default=None, help="parallel runs (default: number of CPUs)"
    )
    s.add_argument(
        "--backend",
        choices=BACKENDS,
        default=None,
        help="executor (default: process, or inprocess when workers is 1)",
    )
    s.add_argument(
        "--ray-address", default=None, help="connect to this Ray cluster (implies --backend ray)"
    )
    s.add_argument("--quiet", action="store_true", help="no progress bar")


def _spec_from_args(a: argparse.Namespace) -> tuple[SweepSpec, str, int | None, str | None]:
    fields: dict[str, Any] = {}
    if is_sweep_file(a.scenario):
        fields = load_sweep_file(a.scenario)
        scenario = fields["scenario"]
    else:
        scenario = a.scenario
    grid = dict(fields.get("grid", {}))
    for k, v in parse_grid(a.grid).items():
        grid[k] = v  # the command line wins over the file
    if a.seeds is not None:
        seeds = parse_seeds(a.seeds)
    elif "seeds" in fields:
        seeds = fields["seeds"]
    else:
        seeds = [_load_scenario(scenario, [*fields.get("set", []), *a.overrides]).scenario.run.seed]
    out = a.out or fields.get("out")
    if not out:
        raise ScenarioError("--out is required (or 'out' in the sweep file)", file="--out")
    workers = a.workers if a.workers is not None else fields.get("workers")
    ray_address = a.ray_address or fields.get("ray_address")
    backend = (
        a.backend
        or fields.get("backend")
        or ("ray" if ray_address else ("inprocess" if workers == 1 else "process"))
    )
    if backend not in BACKENDS:
        raise ScenarioError(
            f"unknown backend {backend!r} (choose from {', '.join(BACKENDS)})", file="--backend"
        )
    spec = SweepSpec(
        scenario=scenario,
        grid=grid,
        seeds=list(seeds),
        out=out,
        overrides=[*fields.get("set", []), *a.overrides],
    )
    return spec, backend, workers, ray_address


def cmd_sweep(args: argparse.Namespace, *, runner: Runner | None = None) -> int:
    """Handler of ``fedsim sweep``: 0 if every run completed, 1 if any failed, 130 if interrupted.

    A bad grid, seed list, sweep file or scenario raises
    :class:`ScenarioError` (the command prints it on one line and exits 2).
    """
    spec, backend, workers, ray_address = _spec_from_args(args)
    try:
        res = run_sweep(
            spec,
            backend=backend,
            workers=workers,
            ray_address=ray_address,
            runner=runner,
            progress=not args.quiet,
        )
    except KeyboardInterrupt:
        print(
            f"fedsim: interrupted; finished runs are kept in {spec.out}; run the same command again to resume",
            file=sys.stderr,
        )
        return 130
    n = len(res.index)
    print(
        f"sweep directory: {res.out} ({n} runs: {res.executed} run now, {res.skipped} already done, "
        f"{res.failed} failed; wall {res.wall_s:.1f} s)"
    )
    print(f"index:           {res.out / INDEX_FILE}")
    if res.failed:
        for row in res.index[res.index["status"] == "failed"].itertuples(index=False):
            print(f"failed: {row.run_dir}: {row.error}", file=sys.stderr)
        return 1
    return 0
