"""Byte-identity check for refactors: run every shipped scenario (shrunk, 3 rounds) and compare tables.

Usage::

    python bench/byte_identity.py record DIR     # run the list, write DIR/<case>/{rounds,clients,events}.parquet
    python bench/byte_identity.py compare DIR    # run the list again into a temp dir, compare with DIR

Each case is one scenario with the smoke run's shrinking overrides
(``tests.test_scenarios.smoke_overrides``) and ``run.rounds=3``; the fedmoe
scenarios smart-city-small and downtown-grid also run with
``protocol.fedmoe.aggregation`` async and semi_async. ``compare`` reports, per
case and table, ``bytes`` (the Parquet files are byte-identical) or ``frame``
(the frames are equal though the files differ: Parquet metadata), ``absent``
(neither run wrote the table: nmoe has no ``clients``) or ``DIFF``;
it exits 1 on any ``DIFF``. ``--set KEY=VALUE`` adds an override to every case
(``--set channel.population=lazy`` checks the lazy population on the small
scenarios). metro-100k is left out: building its 100 000-client
population alone takes minutes on two cores. nmoe-cifar10 needs the CIFAR-10
subset; pass ``--data DIR`` (default ``../shared/data`` beside the repository).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
TABLES = ("rounds", "clients", "events")
SCENARIOS = ("smart-city-small", "alignment-fig3", "downtown-grid", "highway-corridor", "stadium-event",
             "industrial-campus", "nmoe-cifar10")
MODES = {"smart-city-small": ("async", "semi_async"), "downtown-grid": ("async", "semi_async")}


def cases(data: Path) -> list[tuple[str, str, list[str]]]:
    """(case name, scenario path, overrides) for every case of the check."""
    sys.path.insert(0, str(REPO))
    import yaml

    from fedsim.config import load_scenario
    from tests.test_scenarios import smoke_overrides

    out = []
    for name in SCENARIOS:
        path = REPO / "scenarios" / f"{name}.yaml"
        data_dir = ((yaml.safe_load(path.read_text()) or {}).get("data") or {}).get("dir")
        local = [f"data.dir={data / Path(data_dir).name}"] if data_dir else []
        shrink = smoke_overrides(load_scenario(path, local).scenario)
        overrides = [*local, *(o for o in shrink if not o.startswith("run.rounds=")), "run.rounds=3"]
        out.append((name, str(path), overrides))
        for mode in MODES.get(name, ()):
            out.append((f"{name}-{mode}", str(path), [*overrides, f"protocol.fedmoe.aggregation={mode}"]))
    return out


def run_case(path: str, overrides: list[str], out: Path) -> None:
    cmd = [sys.executable, "-m", "fedsim.cli", "run", path, "--out", str(out), "--quiet", "--no-figures",
           *(f"--set={o}" for o in overrides)]
    subprocess.run(cmd, check=True, cwd=REPO)


def compare_table(a: Path, b: Path) -> str:
    """``bytes`` / ``frame`` (equal frames, different files) / ``absent`` (neither run wrote it: nmoe has no clients table) / ``DIFF``."""
    if not a.exists() or not b.exists():
        return "absent" if a.exists() == b.exists() else "DIFF"
    if a.read_bytes() == b.read_bytes():
        return "bytes"
    fa, fb = pd.read_parquet(a), pd.read_parquet(b)
    try:
        pd.testing.assert_frame_equal(fa, fb, check_exact=True)
    except AssertionError:
        return "DIFF"
    return "frame"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("action", choices=("record", "compare"))
    ap.add_argument("dir", type=Path)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--only", nargs="*", default=None, help="case names to run (default: all)")
    ap.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE",
                    help="an extra override for every case, e.g. channel.population=lazy (repeatable)")
    args = ap.parse_args(argv)
    todo = [c for c in cases(args.data) if args.only is None or c[0] in args.only]
    bad = 0
    with tempfile.TemporaryDirectory() as tmp:
        for name, path, overrides in todo:
            out = (args.dir if args.action == "record" else Path(tmp)) / name
            run_case(path, [*overrides, *args.extra], out)
            if args.action == "record":
                print(f"{name}: recorded", flush=True)
                continue
            verdicts = {t: compare_table(args.dir / name / f"{t}.parquet", out / f"{t}.parquet") for t in TABLES}
            bad += sum(v == "DIFF" for v in verdicts.values())
            print(f"{name}: " + " ".join(f"{t}={v}" for t, v in verdicts.items()), flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
