"""report.html of a real run and of a sweep: self-contained, and sound in a headless Chromium.

The browser test needs Debian's ``chromium`` and ``chromium-driver`` and the
``selenium`` package (dev extra). Locally it skips, saying why, when they are
missing; ``.ci/run`` installs them and sets ``FEDSIM_REQUIRE_BROWSER=1``,
which turns that skip into a failure.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedsim.cli import main
from tests.rundir_factory import make_run_dir

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--set", "run.rounds=2", "--set", "data.max_train_samples=300",
         "--set", "evaluation.max_test_samples=100", "--quiet"]


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def _tags(text: str) -> list[tuple[str, dict[str, str | None]]]:
    p = _Tags()
    p.feed(text)
    return p.tags


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report") / "run"
    buf = io.StringIO()
    old, sys.stdout = sys.stdout, buf
    try:
        rc = main(["run", str(REPO / "scenarios" / "smart-city-small.yaml"), "--out", str(out),
                   *SMALL])
    finally:
        sys.stdout = old
    assert rc == 0
    printed = buf.getvalue()
    assert f"report:        {out / 'report.html'}" in printed, printed
    return out


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic sweep directory: 2 policies x 2 clients_per_round x 3 seeds."""
    d = tmp_path_factory.mktemp("sweep") / "sw"
    d.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for pol in ("load_balanced", "random"):
        for k in (4, 8):
            for seed in range(3):
                acc = (0.8 if pol == "load_balanced" else 0.7) + 0.01 * k + rng.normal(0, 0.01)
                make_run_dir(d / f"r{len(rows)}", policy=pol, seed=seed, rounds=6,
                             accuracy=[acc * (1 - 0.5 ** (r + 1)) for r in range(6)])
                rows.append({"protocol.fedmoe.alignment.policy": pol, "protocol.fedmoe.clients_per_round": k,
                             "seed": seed, "status": "completed", "run_dir": f"r{len(rows)}",
                             "error": None, "wall_s": 1.0, "final_accuracy": acc,
                             "best_accuracy": acc + 0.01, "rounds_to_target": 5.0,
                             "sim_s_to_target": 100.0 / k, "sim_s_total": 300.0 + k,
                             "stragglers": 3.0, "dropouts": 1.0, "ooms": 0.0,
                             "bytes_total": 1e8})
    pd.DataFrame(rows).to_parquet(d / "sweep.parquet")
    (d / "sweep.json").write_text(json.dumps(
        {"grid_keys": ["protocol.fedmoe.alignment.policy", "protocol.fedmoe.clients_per_round"]}))
    assert main(["report", str(d)]) == 0
    return d


def _check_self_contained(report: Path) -> list[tuple[str, dict[str, str | None]]]:
    text = report.read_text(encoding="utf-8")
    tags = _tags(text)
    for tag, attrs in tags:
        for key in ("src", "href"):
            v = attrs.get(key) or ""
            assert not re.match(r"^(https?:)?//", v), f"<{tag} {key}={v[:60]}> fetches from the network"
    assert "<script" not in text.lower() and "@import" not in text
    return tags


def test_run_report_embeds_every_figure_with_a_caption(run_dir: Path) -> None:
    report = run_dir / "report.html"
    tags = _check_self_contained(report)
    imgs = [a["src"] for t, a in tags if t == "img"]
    pngs = sorted(p.stem for p in (run_dir / "figures").glob("*.png"))
    assert "coverage" in pngs and len(imgs) == len(pngs) >= 9
    assert all(s and s.startswith("data:image/png;base64,") for s in imgs)
    text = report.read_text(encoding="utf-8")
    assert text.count("<figcaption>") == len(pngs)
    for stem in pngs:  # a reading guide, not just the file name
        cap = re.search(rf'id="fig-{stem}".*?<figcaption>(.*?)</figcaption>', text, re.S)
        assert cap and len(cap.group(1)) > 60, stem
    assert "final accuracy" in text and "smart-city-small" in text
    r = pd.read_parquet(run_dir / "rounds.parquet")
    assert f"Of {int(r['selected'].sum()):,} client-rounds, {int(r['stragglers'].sum()):,} straggled" in text


def test_report_command_rejects_other_directories(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "neither a run directory" in err
    assert not (tmp_path / "report.html").exists()


def test_round_timeline_of_a_real_run(run_dir: Path, capsys: pytest.CaptureFixture) -> None:
    from analysis.plots_round import _transfers, cell_flow_counts, round_intervals

    assert main(["plot", str(run_dir), "--round", "1"]) == 0
    assert (run_dir / "figures" / "round_1.png").is_file()
    iv = round_intervals(run_dir, 1)
    cl = pd.read_parquet(run_dir / "clients.parquet")
    sel = cl[cl["round"] == 1]
    assert set(iv["client"]) == set(sel["client"])
    # each completed client's phases add up to what clients.parquet recorded
    for r in sel[sel["status"] == "completed"].itertuples():
        d = iv[iv["client"] == r.client]
        for ph in ("download", "compute", "upload"):
            got = float((d.loc[d["phase"] == ph, "t1"] - d.loc[d["phase"] == ph, "t0"]).sum())
            assert got == pytest.approx(float(getattr(r, f"t_{ph}_s")), abs=1e-6), (r.client, ph)
    # the flow count never exceeds the transfers of that cell and direction
    tr = _transfers(__import__("analysis.rundir", fromlist=["RunDir"]).RunDir(run_dir))
    for cell in tr["cell"].dropna().unique():
        t, n = cell_flow_counts(tr, cell, "up", 0.0, float(tr["t1"].max()))
        assert n.max() <= int(((tr["cell"] == cell) & (tr["direction"] == "up")).sum())
    assert main(["plot", str(run_dir), "--round", "99"]) == 2
    assert "round 99 has no selected clients" in capsys.readouterr().err


def test_cell_flow_counts_by_hand() -> None:
    from analysis.plots_round import cell_flow_counts

    tr = pd.DataFrame({"round": 0, "client": ["a", "b", "c", "d"],
                       "direction": ["up", "up", "up", "down"],
                       "cell": ["bs0", "bs0", "bs1", "bs0"],
                       "t0": [0.0, 1.0, 0.5, 0.0], "t1": [2.0, 3.0, 1.0, 5.0]})
    t, n = cell_flow_counts(tr, "bs0", "up", 0.0, 4.0)
    assert t.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert n.tolist() == [1, 2, 1, 0, 0]


def test_sweep_report_has_cell_table_with_cis_and_plots(sweep_dir: Path) -> None:
    report = sweep_dir / "report.html"
    tags = _check_self_contained(report)
    text = report.read_text(encoding="utf-8")
    assert text.count("±") >= 4 * 2  # 4 cells, final accuracy and more with a CI
    assert "load_balanced" in text and "clients_per_round" in text
    imgs = [a["src"] for t, a in tags if t == "img"]
    assert len(imgs) >= 2 and all(s.startswith("data:image/png;base64,") for s in imgs)
    assert "final_accuracy_vs_clients_per_round" in text
    # the per-cell figures of issue 30, each with its reading guide, the trade-off first
    order = [text.find(f'id="fig-{s}"') for s in ("tradeoff", "accuracy_vs_time_by_cell",
                                                    "accuracy_vs_bytes_by_cell", "straggler_share")]
    assert all(i > 0 for i in order) and order == sorted(order), order
    assert "up and to the left is better" in text and "band from the lowest to the highest seed" in text


# ---------------------------------------------------------------------------
# a real browser


def _browser_or_skip() -> tuple[str, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    try:
        import selenium  # noqa: F401
        have_selenium = True
    except ImportError:
        have_selenium = False
    missing = [n for n, ok in (("chromium", chromium), ("chromium-driver (chromedriver)", driver),
                               ("selenium", have_selenium)) if not ok]
    if missing:
        why = ("headless-browser test needs " + ", ".join(missing)
               + " (apt-get install chromium chromium-driver; pip install selenium)")
        if os.environ.get("FEDSIM_REQUIRE_BROWSER") == "1":
            pytest.fail(why + "; FEDSIM_REQUIRE_BROWSER=1 forbids skipping")
        pytest.skip(why)
    return str(chromium), str(driver)


def _open_in_chromium(report: Path, shot: Path) -> tuple[list[dict], list[list]]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = _browser_or_skip()
    opts = webdriver.ChromeOptions()
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--window-size=1400,1000", "--disable-background-networking"):
        opts.add_argument(a)
    opts.binary_location = chromium
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(service=Service(driver), options=opts)
    try:
        d.set_page_load_timeout(60)
        d.get(report.resolve().as_uri())
        imgs = d.execute_script(
            "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, "
            "i.naturalHeight, i.alt])")
        logs = d.get_log("browser")
        d.save_screenshot(str(shot))
    finally:
        d.quit()
    return logs, imgs


def _assert_not_blank(png: Path) -> None:
    from matplotlib.image import imread

    img = imread(png)[..., :3]
    assert img.shape[0] >= 500 and img.shape[1] >= 800
    q = (img[::3, ::3].reshape(-1, 3) * 255).astype(np.int64)
    assert float(img.std()) > 0.05, "screenshot is (nearly) one colour"
    assert np.unique(q[:, 0] * 65536 + q[:, 1] * 256 + q[:, 2]).size > 50


@pytest.mark.parametrize("which", ["run", "sweep"])
def test_report_in_headless_chromium(which: str, request: pytest.FixtureRequest,
                                     tmp_path: Path) -> None:
    _browser_or_skip()
    d = request.getfixturevalue("run_dir" if which == "run" else "sweep_dir")
    logs, imgs = _open_in_chromium(d / "report.html", tmp_path / "shot.png")
    severe = [e for e in logs if e.get("level") == "SEVERE"]
    assert severe == [], severe
    assert imgs, "no image on the page"
    for complete, w, h, alt in imgs:
        assert complete and w > 0 and h > 0, f"image {alt!r} did not decode ({w} x {h})"
    _assert_not_blank(tmp_path / "shot.png")
