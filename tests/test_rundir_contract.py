"""The run-directory contract, on REAL runs of every registered protocol.

Every protocol in :data:`fedsim.protocols.REGISTRY` runs a small scenario
through ``fedsim run``; on its run directory ``fedsim info``, ``fedsim plot``
and ``fedsim compare`` must exit 0 and write figures; every file it wrote
must be a table declared in :mod:`fedsim.engine.tables` with its declared
columns; and the README's table of run-directory files must list exactly
the declared tables.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from fedsim.cli import main
from fedsim.engine.tables import RUN_DIR_FILES, TABLES, TableSchemaError, check_frame
from fedsim.protocols import PROTOCOL_NAMES

REPO = Path(__file__).resolve().parents[1]
SCENARIO = REPO / "scenarios" / "smart-city-small.yaml"
SMALL = [
    "run.rounds=2",
    "data.max_train_samples=300",
    "evaluation.max_test_samples=100",
    "topology.grid.clients={phone: 2, vehicle: 2, sensor: 1, camera: 1}",
    "training.local_epochs=1",
    "protocol.nmoe.extractor=fedce",
    "protocol.nmoe.inference_horizon_s=10.0",
    "protocol.nmoe.request_rate_per_s=0.5",
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One real run directory per registered protocol."""
    root = tmp_path_factory.mktemp("contract")
    out = {}
    for name in PROTOCOL_NAMES:
        d = root / name
        code = main(["run", str(SCENARIO), "--out", str(d), "--quiet", "--no-figures",
                     *(f"--set={s}" for s in [*SMALL, f"protocol.name={name}"])])
        assert code == 0, f"fedsim run exited {code} for protocol {name}"
        out[name] = d
    return out


@pytest.mark.parametrize("name", PROTOCOL_NAMES)
def test_every_file_is_a_declared_table(runs: dict[str, Path], name: str) -> None:
    d = runs[name]
    written = {p.stem for p in d.glob("*.parquet")}
    assert "rounds" in written and "events" in written
    assert written <= set(TABLES), f"undeclared tables: {written - set(TABLES)}"
    for t in written:
        df = pd.read_parquet(d / f"{t}.parquet")
        check_frame(t, df)
        assert list(df.columns[: 1]) == [TABLES[t].columns[0].name]
    rounds = pd.read_parquet(d / "rounds.parquet")
    assert rounds["accuracy"].notna().any(), "the run's rounds table has no accuracy"


@pytest.mark.parametrize("name", PROTOCOL_NAMES)
def test_info_plot_compare_work(runs: dict[str, Path], name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = runs[name]
    assert main(["info", str(d)]) == 0
    assert main(["plot", str(d)]) == 0
    assert list((d / "figures").glob("*.png")), f"fedsim plot wrote no figure for {name}"
    cmp_dir = tmp_path / "cmp"
    assert main(["compare", str(d), str(runs[PROTOCOL_NAMES[0]]), "--out", str(cmp_dir)]) == 0
    assert list(cmp_dir.glob("*.png")), "fedsim compare wrote no figure"


def test_closing_line_reports_accuracy(runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``fedsim run``'s last line reports a finite accuracy for every protocol (nmoe: the trained model's)."""
    for name in PROTOCOL_NAMES:
        acc = pd.read_parquet(runs[name] / "rounds.parquet")["accuracy"].dropna()
        assert len(acc) and 0.0 <= acc.iloc[-1] <= 1.0, name


def test_undeclared_column_is_an_error_naming_it() -> None:
    with pytest.raises(TableSchemaError, match="'rounds'.*'bogus'"):
        check_frame("rounds", pd.DataFrame({"round": [0], "bogus": [1.0]}))
    with pytest.raises(TableSchemaError, match="'rounds'.*'accuracy'.*float"):
        check_frame("rounds", pd.DataFrame({"round": [0], "accuracy": ["high"]}))
    with pytest.raises(TableSchemaError, match="'nope'"):
        check_frame("nope", pd.DataFrame({"a": [1]}))


def _readme_run_dir_files() -> set[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("## Outputs and how to open them", 1)[1].split("\n#", 1)[0]
    files: set[str] = set()
    for line in section.splitlines():
        if line.startswith("| `"):
            first_cell = line.split("|")[1]
            files.update(re.findall(r"`([^`]+)`", first_cell))
    return files


def test_readme_table_of_files_matches_the_declaration() -> None:
    files = _readme_run_dir_files()
    declared = {f"{t}.parquet" for t in TABLES} | set(RUN_DIR_FILES)
    assert files == declared, f"README lists {sorted(files - declared)} not declared; misses {sorted(declared - files)}"


@pytest.mark.parametrize("protocol", PROTOCOL_NAMES)
def test_the_synthetic_run_directory_factory_writes_declared_tables(tmp_path: Path, protocol: str) -> None:
    """tests/rundir_factory.py (the analysis tests' run directories) follows engine/tables.py too."""
    from tests.rundir_factory import make_run_dir

    d = make_run_dir(tmp_path / protocol, protocol=protocol, rounds=3)
    written = sorted(d.glob("*.parquet"))
    assert written
    for p in written:
        assert p.stem in TABLES, f"undeclared table {p.stem}"
        check_frame(p.stem, pd.read_parquet(p))
