"""Planning a sweep: expand it into validated :class:`RunTask` s, and resume (skip completed runs, trash the rest)."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedsim.build import load_checked
from fedsim.config import LoadedScenario, ScenarioError
from fedsim.sweep.index import read_manifest
from fedsim.sweep.spec import SweepSpec, grid_cells, run_names, value_json

__all__ = [
    "RunTask",
    "plan_runs",
    "TRASH_DIR",
    "check_or_trash",
]

TRASH_DIR = ".trash"


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
    resume: bool = False  # continue the interrupted run in out_dir from its checkpoint


def plan_runs(spec: SweepSpec) -> tuple[list[RunTask], list[LoadedScenario]]:
    """Expand ``spec`` into run tasks (ordered by cell then seed) and validate every one.

    Every run's scenario is loaded and checked with
    :func:`fedsim.build.load_checked` (every rule, world rules included)
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
        cell_ov = [f"{k}={value_json(v)}" for k, v in cell.items()]
        for seed in spec.seeds:
            ov = (*spec.overrides, *cell_ov)
            try:
                ls = load_checked(spec.scenario, list(ov), seed=seed)
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
# resuming


def _resumable(d: Path, m: dict[str, Any] | None, loaded: LoadedScenario) -> bool:
    """Whether run directory ``d`` (manifest ``m``) is an interrupted run of ``loaded`` with a sound checkpoint."""
    from fedsim import __version__
    from fedsim.api import checkpoint_identity
    from fedsim.engine.checkpoint import HEADER_FILE, CheckpointError, read_checkpoint

    if m is None or m.get("status") not in ("running", "failed", "interrupted") or m.get("fedsim_version") != __version__:
        return False
    expected = json.loads(json.dumps(loaded.scenario.model_dump(mode="json"), default=str))
    if m.get("scenario") != expected or not (d / HEADER_FILE).is_file():
        return False
    try:
        read_checkpoint(d, checkpoint_identity(loaded))
    except CheckpointError:
        return False  # a corrupt checkpoint: the directory goes to the trash, the run starts over
    return True


def check_or_trash(task: RunTask, loaded: LoadedScenario, out: Path, *, resumable: bool = False) -> bool | str:
    """True if ``task`` already completed; ``"resume"`` if ``resumable`` and its directory
    holds an interrupted run of the same scenario with a sound checkpoint; otherwise
    False, after clearing its directory (moving it to the trash)."""
    d = Path(task.out_dir)
    if not d.exists():
        return False
    m = read_manifest(d)
    if resumable and _resumable(d, m, loaded):
        return "resume"
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
