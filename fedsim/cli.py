"""The ``fedsim`` command.

    fedsim run SCENARIO [--out DIR] [--seed N] [--set k=v ...] [--quiet]
    fedsim run --resume DIR
    fedsim validate SCENARIO...
    fedsim plot RUN_DIR [--round N]
    fedsim info RUN_DIR
    fedsim report RUN_DIR|SWEEP_DIR
    fedsim compare RUN_DIR... --out DIR [--target ACC]   (or one sweep directory)
    fedsim sweep SCENARIO --grid key=v1,v2 ... --seeds 0-4 --out DIR [--workers N] [--backend B]
    fedsim defaults

Exit codes: 0 success, 2 bad input (one line on stderr, no traceback),
1 internal error (the run directory keeps what was written, and
``error.txt`` holds the traceback), 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedsim.config import LoadedScenario
    from fedsim.sweep import Runner, SweepSpec

__all__ = ["main", "build_parser", "add_sweep_parser", "cmd_sweep"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        self.print_usage(sys.stderr)
        print(f"fedsim: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``fedsim`` command."""
    p = _Parser(prog="fedsim", description="Discrete-event simulator of federated Mixture-of-Experts at the wireless edge.")
    from fedsim.version import __version__

    p.add_argument("--version", action="version", version=f"fedsim {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)

    r = sub.add_parser("run", help="run a scenario and write a run directory")
    r.add_argument("scenario", nargs="?", help="scenario file (omit with --resume)")
    r.add_argument("--out", help="run directory to create (default: <output.dir>/<run.name>-seed<seed>)")
    r.add_argument("--resume", metavar="DIR", help="continue the interrupted run in DIR from its last checkpoint")
    r.add_argument("--seed", type=int, help="override run.seed")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override any scenario key, e.g. --set model.num_experts=8")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.add_argument("--no-figures", action="store_true", help="skip figures")

    v = sub.add_parser("validate", help="validate scenario files")
    v.add_argument("scenarios", nargs="+")
    v.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    v.add_argument("--resolved", action="store_true", help="print each scenario fully resolved (extends, --set, defaults), every value with the file and line it came from")

    pl = sub.add_parser("plot", help="write figures of a run directory into RUN_DIR/figures")
    pl.add_argument("run_dir")
    pl.add_argument("--round", type=int, default=None, dest="round_", metavar="N",
                    help="only the timeline of round N: each client's phases, cell and cell sharing")

    rp = sub.add_parser("report", help="write a self-contained report.html of a run or sweep directory")
    rp.add_argument("path", metavar="RUN_DIR|SWEEP_DIR")

    i = sub.add_parser("info", help="summary table of a run directory")
    i.add_argument("run_dir")

    c = sub.add_parser("compare", help="overlay runs and write a summary table")
    c.add_argument("run_dirs", nargs="+")
    c.add_argument("--out", required=True)
    c.add_argument("--target", type=float, default=None, help="target accuracy for time-to-target (default: each run's evaluation.target_accuracy)")

    add_sweep_parser(sub)
    sub.add_parser("defaults", help="print every scenario key with its default, unit and rule (commented YAML)")
    return p


def _err(msg: str, code: int = 2) -> int:
    print(f"fedsim: {msg}", file=sys.stderr)
    return code


def _progress_bar(quiet: bool, rounds: int) -> tuple[Any, Any]:
    if quiet:
        return None, None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    prog = Progress(
        TextColumn("[bold]round"),
        MofNCompleteColumn(),
        BarColumn(),
        TextColumn("sim {task.fields[t]}"),
        TextColumn("acc {task.fields[acc]}"),
        TextColumn("moved {task.fields[moved]}"),
        TimeElapsedColumn(),
        transient=False,
    )
    task = prog.add_task("run", total=rounds, t="0 s", acc="-", moved="0 B")
    from fedsim.engine.headline import short_seconds

    def update(**kw: Any) -> None:
        fields: dict[str, Any] = {}
        if "t_s" in kw:
            fields["t"] = short_seconds(kw["t_s"])
        if kw.get("accuracy") is not None and kw["accuracy"] == kw["accuracy"]:
            fields["acc"] = f"{kw['accuracy']:.3f}"
        if "bytes" in kw:
            fields["moved"] = _fmt_bytes(kw["bytes"])
        if "rounds" in kw:
            prog.update(task, total=kw["rounds"])
        prog.update(task, completed=kw.get("round", 0), **fields)

    return prog, update


def _fmt_bytes(b: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(b) < 1000:
            return f"{b:.0f} {unit}" if unit == "B" else f"{b:.1f} {unit}"
        b /= 1000
    return f"{b:.1f} PB"


def _cmd_run(a: argparse.Namespace) -> int:
    from fedsim.api import load_scenario, prepare_resume, resume, run

    figs = False if a.no_figures else None
    if a.resume is not None:
        if a.scenario or a.out or a.seed is not None or a.overrides:
            return _err("--resume DIR takes no SCENARIO, --out, --seed or --set (the run directory records them)")
        prep = prepare_resume(a.resume)  # a bad DIR is refused before any progress bar shows
        prog, update = _progress_bar(a.quiet, prep[0].scenario.run.rounds)
        go = lambda: resume(a.resume, progress=update, figures=figs, prepared=prep)  # noqa: E731
    else:
        if not a.scenario:
            return _err("run: give a SCENARIO (or --resume DIR)")
        loaded = load_scenario(a.scenario, a.overrides, seed=a.seed)
        _print_hints(loaded)
        counts = _client_counts(loaded)
        if counts:
            print(counts)
        prog, update = _progress_bar(a.quiet, loaded.scenario.run.rounds)
        go = lambda: run(loaded, a.out, progress=update, figures=figs)  # noqa: E731
    try:
        if prog is not None:
            with prog:
                res = go()
        else:
            res = go()
    except KeyboardInterrupt:
        return _err("interrupted; files written so far are kept (continue with: fedsim run --resume RUN_DIR)", 130)
    rounds = res.rounds
    last = rounds["accuracy"].dropna().iloc[-1] if "accuracy" in rounds and rounds["accuracy"].notna().any() else float("nan")
    print(f"run directory: {res.run_dir}")
    n_fig = len({p.stem for p in res.figures})
    if a.no_figures or not res.figures:  # (--resume has no `loaded` here)
        why = "--no-figures" if a.no_figures else "output.figures: false"
        print(f"figures:       none ({why}); draw them later with: fedsim plot {res.run_dir}")
    else:
        print(f"figures:       {res.run_dir / 'figures'} ({n_fig} figures, PNG and SVG)")
    cl = res.manifest.get("clients") or {}
    if cl.get("offline_whole_run"):
        print(f"offline:       {cl['offline_whole_run']} of {cl['total']} were offline for the whole run "
              "(never selectable; see devices.classes.*.mean_on_s / mean_off_s or devices.dropout)")
    from fedsim.engine.headline import short_seconds

    print(f"final accuracy {last:.4f}, simulated time {short_seconds(res.manifest.get('sim_end_s', 0.0))}, wall {res.manifest['wall_s']:.1f} s")
    cl = res.clients
    if len(cl) and {"client", "status"} <= set(cl.columns):
        ok = cl.groupby("client")["status"].apply(lambda st: bool((st == "completed").any()))
        print(f"clients:       {int((~ok).sum())} of {len(ok)} selected never completed a round")
    print(f"report:        {_write_report(res.run_dir)}")
    return 0


def _write_report(path: Path) -> Path:
    from analysis.report import write_report

    return write_report(path, draw_figures=False)


def _cmd_report(a: argparse.Namespace) -> int:
    from fedsim.config import ScenarioError

    p = Path(a.path)
    if not ((p / "manifest.json").is_file() or (p / "sweep.parquet").is_file()):
        raise ScenarioError("neither a run directory (manifest.json) nor a sweep directory (sweep.parquet)", file=a.path)
    if not (p / "sweep.parquet").is_file():
        _run_dir_arg(a.path)
    from analysis.report import write_report

    print(f"report: {write_report(p)}")
    return 0


def _client_counts(loaded: Any) -> str:
    """``clients: N (class n, ...)`` of a scenario (builds its topology graph)."""
    from collections import Counter

    from fedsim.build import TopologyError, build_graph

    try:
        g = build_graph(loaded)
    except TopologyError:
        return ""  # the run reports the topology error itself, as one line
    per = Counter(d.get("device_class", "?") for _, d in g.nodes(data=True) if d.get("kind") == "client")
    return f"device classes: {sum(per.values())} clients (" + ", ".join(f"{k} {v}" for k, v in sorted(per.items())) + ")"


def _print_hints(loaded: LoadedScenario) -> None:
    """Print the scenario's one-line spelling hints on stderr (they are not errors)."""
    from fedsim.config.rules import scenario_hints

    for h in scenario_hints(loaded):
        print(f"fedsim: hint: {h}", file=sys.stderr)


def _cmd_validate(a: argparse.Namespace) -> int:
    from fedsim.build import load_checked
    from fedsim.config import ScenarioError

    bad = 0
    for path in a.scenarios:
        try:
            loaded = load_checked(path, a.overrides)  # every rule, reachability included (builds the graph)
            _print_hints(loaded)
            if a.resolved:
                from fedsim.config.reference import resolved_yaml

                print(resolved_yaml(loaded), end="")
            print(f"{'# ' if a.resolved else ''}ok  {path}")
        except ScenarioError as e:
            print(f"fedsim: {e}", file=sys.stderr)
            bad += 1
    return 2 if bad else 0


def _run_dir_arg(path: str, *, note: bool = True) -> Path:
    """A run directory to analyse; an incomplete run (killed, interrupted, failed) gets a
    note on stderr (when ``note``) saying how far its tables go and how to resume it.

    Raises:
        ScenarioError: not a run directory, or an incomplete one with no tables yet.
    """
    from fedsim.config import ScenarioError

    p = Path(path)
    if not (p / "manifest.json").is_file():
        raise ScenarioError("not a run directory (no manifest.json)", file=path)
    msg = _incomplete_note(p)
    if msg is not None and not (p / "rounds.parquet").is_file():
        raise ScenarioError("incomplete run with no tables yet (stopped before its first checkpoint); "
                            f"continue it with: fedsim run --resume {p}", file=path)
    if msg is not None and note:
        print(f"fedsim: note: {msg}", file=sys.stderr)
    return p


def _incomplete_note(p: Path) -> str | None:
    from analysis.rundir import RunDir

    try:
        return RunDir(p).incomplete_note()
    except (OSError, ValueError):  # an unreadable manifest: the command reports it
        return None


def _cmd_plot(a: argparse.Namespace) -> int:
    from analysis.plots import plot_run
    from fedsim.config import ScenarioError

    d = _run_dir_arg(a.run_dir)
    if a.round_ is not None:
        from analysis.plots_round import plot_round

        try:
            paths = plot_round(d, a.round_, d / "figures")
        except ValueError as e:
            raise ScenarioError(str(e), file=str(d)) from None
        if not paths:
            return _err(f"{d}: round {a.round_}: nothing to draw (no clients.parquet)")
        print(f"wrote {paths[0].with_suffix('')}.{{png,svg}}")
        return 0
    paths = plot_run(d)
    print(f"wrote {len({p.stem for p in paths})} figures (PNG and SVG) to {d / 'figures'}")
    return 0


def _cmd_info(a: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from analysis.info import summary_table

    d = _run_dir_arg(a.run_dir, note=False)
    t = Table(title=str(d), show_header=False)
    t.add_column("key", style="bold")
    t.add_column("value")
    for k, v in summary_table(d):
        t.add_row(k, v)
    Console().print(t)
    msg = _incomplete_note(d)
    if msg is not None:
        print(msg)
    return 0


def _console() -> Any:
    """A rich console; piped output gets a wide fixed width instead of 80 columns."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=160)


def _cmd_compare(a: argparse.Namespace) -> int:
    from analysis.compare import compare_runs
    from analysis.terminal import cells_table, runs_table

    if len(a.run_dirs) == 1 and (Path(a.run_dirs[0]) / "sweep.parquet").is_file():
        from analysis.sweep import DEFAULT_METRICS, compare_sweep, read_sweep

        cells = compare_sweep(a.run_dirs[0], a.out)
        keys = read_sweep(a.run_dirs[0])[1]
        shown = [m for m in ("final_accuracy", "rounds_to_target", "sim_s_to_target", "bytes_total") if m in DEFAULT_METRICS]
        _console().print(cells_table(cells, keys, shown, title=f"sweep {a.run_dirs[0]}"))
        print(f"every column (std, n, CI bounds) in {Path(a.out) / 'cells.csv'}; figures in {a.out}")
        return 0
    dirs = [_run_dir_arg(p) for p in a.run_dirs]
    df = compare_runs(dirs, Path(a.out), target_accuracy=a.target)
    tgt = f"target accuracy {a.target:g}" if a.target is not None else "target: each run's evaluation.target_accuracy"
    _console().print(runs_table(df, title=f"{len(df)} runs ({tgt})"))
    print(f"summary.csv / summary.md and figures in {a.out}")
    return 0


# ---------------------------------------------------------------------------
# fedsim sweep (the sweep machinery is the package fedsim.sweep)


def add_sweep_parser(subparsers: Any) -> None:
    """Add ``fedsim sweep`` to the ``fedsim`` command's subparsers."""
    from fedsim.sweep import BACKENDS

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
        "--ray-address", default=None, help="connect to this Ray cluster HOST:PORT (implies --backend ray)"
    )
    s.add_argument(
        "--ray-data",
        choices=("ship", "local"),
        default="ship",
        help="ray: ship the scenario's data directory and traces to the workers through the object "
        "store (default), or read them on every node at the same path (local)",
    )
    s.add_argument("--quiet", action="store_true", help="no progress bar")


def _spec_from_args(a: argparse.Namespace) -> tuple[SweepSpec, str, int | None, str | None]:
    from fedsim.config import ScenarioError, load_scenario
    from fedsim.sweep import (
        BACKENDS,
        SweepSpec,
        is_sweep_file,
        load_sweep_file,
        parse_grid,
        parse_seeds,
    )

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
        seeds = [load_scenario(scenario, [*fields.get("set", []), *a.overrides]).scenario.run.seed]
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

    Raises:
        ScenarioError: bad grid, seeds, backend, sweep file or run scenario.
    """
    from fedsim.sweep import INDEX_FILE, run_sweep

    spec, backend, workers, ray_address = _spec_from_args(args)
    try:
        res = run_sweep(
            spec,
            backend=backend,
            workers=workers,
            ray_address=ray_address,
            runner=runner,
            progress=not args.quiet,
            ship_data=getattr(args, "ray_data", "ship") != "local",
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
    from analysis.report import write_report

    print(f"report:          {write_report(res.out)}")
    print(f"figures:         none per run (sweeps skip them); compare the cells with: fedsim compare {res.out} "
          f"--out {res.out / 'report'}, or draw one run's with: fedsim plot RUN_DIR")
    if res.failed:
        for row in res.index[res.index["status"] == "failed"].itertuples(index=False):
            print(f"failed: {row.run_dir}: {row.error}", file=sys.stderr)
        return 1
    return 0


def _cmd_sweep(a: argparse.Namespace) -> int:
    return cmd_sweep(a)


def _cmd_defaults(a: argparse.Namespace) -> int:
    import dataclasses

    from fedsim.config.reference import defaults_yaml
    from fedsim.devices.params import default_device_classes

    per_class = {c: dataclasses.asdict(p) for c, p in default_device_classes().items()}
    print(defaults_yaml(per_class), end="")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fedsim`` command; returns the exit code."""
    from fedsim.config import ScenarioError
    from fedsim.engine.checkpoint import CheckpointError

    args = build_parser().parse_args(argv)
    handlers = {
        "run": _cmd_run,
        "validate": _cmd_validate,
        "plot": _cmd_plot,
        "info": _cmd_info,
        "report": _cmd_report,
        "compare": _cmd_compare,
        "defaults": _cmd_defaults,
        "sweep": _cmd_sweep,
    }
    try:
        code = handlers[args.cmd](args)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return code
    except (ScenarioError, CheckpointError) as e:
        return _err(str(e))
    except KeyboardInterrupt:
        return _err("interrupted", 130)
    except BrokenPipeError:  # `fedsim validate --resolved S | head`: the reader left early
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing more to flush at exit
        return _err("output closed early (broken pipe); the rest of the output was dropped")


if __name__ == "__main__":
    raise SystemExit(main())
