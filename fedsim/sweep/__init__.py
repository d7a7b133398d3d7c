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
``ProcessPoolExecutor`` with the ``spawn`` start method) and ``ray`` (a pool
of warm actors, one CPU each or one GPU for ``training.device: cuda``;
``ray.init()`` locally, or on ``--ray-address``). Ray workers need fedsim
installed on their node but share no disk with the driver: the scenario's
input files travel to them and the run directories (and, while a run goes on,
its checkpoints) travel back through Ray's object store, and a run whose
worker dies resumes elsewhere from its last checkpoint (see
:mod:`fedsim.sweep.ray_pool` and ``docs/ray-cluster.md``).

Python use::

    from fedsim.sweep import SweepSpec, run_sweep
    spec = SweepSpec(scenario="scenarios/smart-city-small.yaml",
                     grid={"protocol.fedmoe.alignment.policy": ["random", "greedy"]},
                     seeds=[0, 1], out="sweeps/policy")
    result = run_sweep(spec, backend="process", workers=2)
    result.index  # the sweep.parquet DataFrame

Modules: :mod:`~fedsim.sweep.spec` (grid / seed syntax, sweep files),
:mod:`~fedsim.sweep.plan` (run tasks, validation up front, resume),
:mod:`~fedsim.sweep.backends` (one run in any process; the executors),
:mod:`~fedsim.sweep.ray_pool` / :mod:`~fedsim.sweep.ray_worker` /
:mod:`~fedsim.sweep.shipping` (the Ray backend: driver, actors, files that travel),
:mod:`~fedsim.sweep.index` (headline metrics, ``sweep.parquet``),
:mod:`~fedsim.sweep.runner` (:func:`run_sweep`). The ``fedsim sweep`` command
is in :mod:`fedsim.cli`.
"""

from fedsim.sweep.backends import BACKENDS, Runner, RunOutcome, execute_run
from fedsim.sweep.index import INDEX_FILE, METRICS, run_dir_headline
from fedsim.sweep.plan import RunTask, plan_runs
from fedsim.sweep.runner import SweepResult, run_sweep
from fedsim.sweep.spec import (
    SweepSpec,
    grid_cells,
    is_sweep_file,
    load_sweep_file,
    parse_grid,
    parse_seeds,
    run_names,
)

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
    "run_dir_headline",
    "run_sweep",
]
