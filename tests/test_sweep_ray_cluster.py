"""The ``ray`` sweep backend on a multi-node cluster that shares no path with the driver.

One ``ray.cluster_utils.Cluster`` per module (a head with no CPUs, so every run
goes to one of two worker nodes with one CPU each; each node has its own
``FEDSIM_SCRATCH``). Every worker process of the test's job gets an audit hook
(``worker_process_setup_hook``) that refuses, and records, any file access
under the driver's directory (the sweep's ``--out``, the data directory) and
under the scenarios folder, and any write under the repository: all of it
passes through Ray's object store or the run fails. ``test_guard_bites``
shows the hook does refuse such an access.

The shipping helpers are tested first without Ray.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import struct
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedsim.config import LoadedScenario, load_scenario
from fedsim.sweep import INDEX_FILE, METRICS, SweepSpec, run_sweep
from fedsim.sweep.shipping import (
    CheckpointWatcher,
    DataMissingError,
    apply_checkpoint,
    check_local_paths,
    pack_path,
    read_tree,
    unpack_path,
    write_run_files,
)

ROOT = Path(__file__).resolve().parents[1]
SCENARIO = ROOT / "scenarios" / "smart-city-small.yaml"
TINY = [
    "run.rounds=2",
    "topology.grid.clients={phone: 3, sensor: 2}",
    "protocol.fedmoe.clients_per_round=3",
    "training.local_epochs=1",
    "data.max_train_samples=300",
    "evaluation.max_test_samples=100",
    "output.figures=false",
]
GRID = {"protocol.fedmoe.alignment.policy": ["load_balanced", "deadline_aware"], "protocol.fedmoe.alignment.w_u": [0.1, 1.0]}
#: manifest fields that record the host's wall clock or the process (never the results)
VOLATILE = {"started_at", "finished_at", "wall_s", "checkpoint", "git_revision"}


def fake_mnist(d: Path, n: int = 400) -> Path:
    """A small MNIST-format test set (IDX, gzipped): class c has a bright band at rows 2c..2c+5."""
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    y = (np.arange(n) % 10).astype(np.uint8)
    x = rng.integers(0, 60, size=(n, 28, 28)).astype(np.uint8)
    for c in range(10):
        x[y == c, 2 * c : 2 * c + 6, 4:24] += 150
    with gzip.GzipFile(d / "t10k-images-idx3-ubyte.gz", "wb", mtime=0) as f:
        f.write(struct.pack(">IIII", 2051, n, 28, 28) + x.tobytes())
    with gzip.GzipFile(d / "t10k-labels-idx1-ubyte.gz", "wb", mtime=0) as f:
        f.write(struct.pack(">II", 2049, n) + y.tobytes())
    return d


# --------------------------------------------------------------------------- shipping, without Ray


def test_pack_unpack_roundtrip_is_deterministic(tmp_path: Path) -> None:
    src = fake_mnist(tmp_path / "data" / "mnist")
    (src / "sub").mkdir()
    (src / "sub" / "x.txt").write_text("x")
    d1, blob1 = pack_path(src)
    os.utime(src / "sub" / "x.txt", (1, 1))
    d2, blob2 = pack_path(src)
    assert d1 == d2 and blob1 == blob2  # no times or owners in the tar
    out = unpack_path(blob1, d1, tmp_path / "node")
    assert out.name == "mnist" and read_tree(out) == read_tree(src)
    assert unpack_path(b"not read again", d1, tmp_path / "node") == out  # unpacked once per node
    f_digest, f_blob = pack_path(src / "sub" / "x.txt")
    assert unpack_path(f_blob, f_digest, tmp_path / "node").read_text() == "x"


def test_write_run_files_replaces_partial_checkpoint(tmp_path: Path) -> None:
    d = tmp_path / "run"
    d.mkdir()
    (d / "checkpoint.log").write_bytes(b"old")
    (d / "manifest.json").write_text('{"status": "running"}')
    write_run_files(d, {"manifest.json": b'{"status": "completed"}', "rounds.parquet": b"r", "tb/e": b"e"})
    assert read_tree(d) == {"manifest.json": b'{"status": "completed"}', "rounds.parquet": b"r", "tb/e": b"e"}
    with pytest.raises(ValueError, match="outside"):
        write_run_files(d, {"../evil": b""})


def test_checkpoint_stream_rebuilds_a_resumable_copy(tmp_path: Path) -> None:
    """The watcher's messages, applied in order, give the driver the worker's checkpoint files exactly."""
    w, drv = tmp_path / "worker", tmp_path / "driver"
    w.mkdir()
    watch = CheckpointWatcher(w)
    assert watch.poll() is None
    log = b""
    for k in range(1, 4):
        log += bytes([k]) * (10 * k)
        (w / "checkpoint.log").write_bytes(log + b"torn")  # bytes past the commit point are not sent
        (w / "checkpoint.json").write_text(json.dumps({"log_bytes": len(log), "rounds_done": k}))
        (w / "manifest.json").write_text(json.dumps({"status": "running", "k": k}))
        msg = watch.poll()
        assert msg is not None and msg["log_offset"] == len(log) - 10 * k
        apply_checkpoint(drv, msg)
        assert watch.poll() is None
        assert (drv / "checkpoint.log").read_bytes() == log
        assert (drv / "checkpoint.json").read_bytes() == (w / "checkpoint.json").read_bytes()
    # a worker resuming from the driver's copy sends only what is new
    assert CheckpointWatcher(drv).sent == len(log)


def test_missing_input_names_node_and_path(tmp_path: Path) -> None:
    loaded = load_scenario(SCENARIO, ["data.dataset=mnist", f"data.dir={fake_mnist(tmp_path / 'm')}"])
    check_local_paths(loaded, "node-a")
    for f in (tmp_path / "m").iterdir():
        f.unlink()
    (tmp_path / "m").rmdir()
    with pytest.raises(DataMissingError) as e:
        check_local_paths(loaded, "node-a/1234abcd")
    msg = str(e.value)
    assert msg.startswith("node node-a/1234abcd: data.dir: ") and str(tmp_path / "m") in msg and "\n" not in msg


def test_cuda_runs_request_a_gpu() -> None:
    from fedsim.sweep.ray_pool import resources_for

    assert resources_for(load_scenario(SCENARIO, ["training.device=cuda"])) == {"num_cpus": 1, "num_gpus": 1}
    assert resources_for(load_scenario(SCENARIO, ["training.device=cpu"])) == {"num_cpus": 1, "num_gpus": 0}
    assert resources_for(load_scenario(SCENARIO, ["training.device=auto"])) == {"num_cpus": 1, "num_gpus": 0}


# --------------------------------------------------------------------------- the cluster


def _guard(forbid_any: list[str], forbid_write: list[str], witness: str):  # type: ignore[no-untyped-def]
    """A worker-process setup hook: an audit hook refusing access to the driver's paths."""

    def setup() -> None:
        import threading as th

        local = th.local()
        write_events = {"os.mkdir", "os.rename", "os.remove", "os.rmdir", "shutil.rmtree", "tempfile.mkstemp",
                        "tempfile.mkdtemp", "os.chmod", "os.truncate"}

        def under(p: object, roots: list[str]) -> bool:
            try:
                s = os.path.abspath(os.fsdecode(p))  # type: ignore[arg-type]
            except (TypeError, ValueError):
                return False
            return any(s == r or s.startswith(r + os.sep) for r in roots)

        def hook(event: str, args: tuple) -> None:
            if getattr(local, "busy", False) or not args:
                return
            paths = list(args[:2]) if event == "os.rename" else [args[0]]
            writing = event in write_events or (
                event == "open" and len(args) > 1 and (any(c in str(args[1] or "") for c in "wax+")
                                                       or (isinstance(args[2], int) and args[2] & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)))
            )
            if event not in write_events | {"open", "os.listdir", "os.scandir"}:
                return
            bad = [p for p in paths if under(p, forbid_any)
                   or (writing and under(p, forbid_write) and "__pycache__" not in os.fsdecode(p))]
            if bad:
                local.busy = True
                try:
                    with open(os.path.join(witness, f"violation-{os.getpid()}.txt"), "a") as fh:
                        fh.write(f"{event} {bad[0]}\n")
                finally:
                    local.busy = False
                raise PermissionError(f"test guard: a worker touched the driver's path {bad[0]} ({event})")

        sys.addaudithook(hook)

    return setup


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """Head (0 CPUs) + two worker nodes (1 CPU, own scratch dir); the driver's files under ``driver``."""
    try:
        import ray
        from ray.cluster_utils import Cluster
    except ImportError:
        pytest.skip("ray is not installed (pip install 'fedsim[ray]')")
    base = tmp_path_factory.mktemp("raycluster")
    driver, witness = base / "driver", base / "witness"
    driver.mkdir()
    witness.mkdir()
    nodes = [base / "node0", base / "node1"]
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    node_ids = [c.add_node(num_cpus=1, env_vars={"FEDSIM_SCRATCH": str(n)}).node_id for n in nodes]
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    hook = _guard([str(driver), str(ROOT / "scenarios")], [str(ROOT)], str(witness))
    ray.init(address=c.address, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False,
             runtime_env={"worker_process_setup_hook": hook})
    try:
        yield {"ray": ray, "driver": driver, "witness": witness, "nodes": nodes, "node_ids": node_ids,
               "data": fake_mnist(driver / "data" / "mnist")}
    finally:
        ray.shutdown()
        c.shutdown()


def _spec(out: Path, data: Path, grid: dict | None = None, extra: list[str] | None = None) -> SweepSpec:
    ov = [*TINY, "data.dataset=mnist", f"data.dir={data}", *(extra or [])]
    return SweepSpec(scenario=SCENARIO, grid=dict(GRID if grid is None else grid), seeds=[0], out=out, overrides=ov)


def _violations(witness: Path) -> list[str]:
    return [line for f in sorted(witness.glob("violation-*")) for line in f.read_text().splitlines()]


def test_guard_bites(cluster) -> None:  # type: ignore[no-untyped-def]
    """The audit hook refuses a worker's access to the driver's directory (so the tests below can fail)."""
    ray = cluster["ray"]
    target = str(cluster["data"] / "t10k-labels-idx1-ubyte.gz")

    @ray.remote(num_cpus=1)
    def peek(p: str) -> str:
        try:
            with open(p, "rb"):
                return "read"
        except PermissionError as e:
            return f"refused: {e}"

    assert ray.get(peek.remote(target)).startswith("refused: test guard")
    assert _violations(cluster["witness"]) == [f"open {target}"]
    for f in cluster["witness"].glob("violation-*"):
        f.unlink()


def test_cpu_worker_sees_no_gpu_and_works_in_node_scratch(cluster) -> None:  # type: ignore[no-untyped-def]
    from fedsim.sweep.ray_worker import SweepWorker

    ray = cluster["ray"]
    w = ray.remote(SweepWorker).options(num_cpus=1, num_gpus=0).remote()
    try:
        info = ray.get(w.info.remote())
        assert info["cuda_visible_devices"] == ""  # training.device auto cannot grab a GPU it was not given
        assert info["cwd"] == info["scratch"] != os.getcwd()
        assert any(Path(info["scratch"]).parent == n for n in cluster["nodes"])
        ray.get(w.close.remote())
        assert not Path(info["scratch"]).exists()
    finally:
        ray.kill(w)


def _assert_runs_identical(ref: Path, out: Path, names: list[str], ignore: frozenset[str] = frozenset()) -> None:
    for name in names:
        a, b = read_tree(ref / name), read_tree(out / name)
        assert sorted(a) == sorted(b), name
        for f in a:
            if f == "manifest.json":
                ma, mb = json.loads(a[f]), json.loads(b[f])
                for m in (ma, mb):
                    for k in VOLATILE | ignore:
                        m.pop(k, None)
                assert ma == mb, name
            else:
                assert a[f] == b[f], f"{name}/{f} differs"


def test_two_node_sweep_byte_identical_to_inprocess(cluster) -> None:  # type: ignore[no-untyped-def]
    driver, data = cluster["driver"], cluster["data"]
    ref = run_sweep(_spec(driver / "ref", data), backend="inprocess")
    assert ref.failed == 0, ref.index["error"].tolist()
    t0 = time.perf_counter()
    res = run_sweep(_spec(driver / "ray", data), backend="ray", workers=2)
    print(f"\n2x2 sweep: inprocess {ref.wall_s:.1f} s, ray on 2 nodes {time.perf_counter() - t0:.1f} s")
    assert res.failed == 0, res.index["error"].tolist()
    cols = ["run_dir", "seed", *GRID, "status", *METRICS]
    pd.testing.assert_frame_equal(res.index[cols], ref.index[cols])
    assert pd.read_parquet(driver / "ray" / INDEX_FILE)["status"].eq("completed").all()
    _assert_runs_identical(driver / "ref", driver / "ray", list(ref.index["run_dir"]))
    assert _violations(cluster["witness"]) == []
    # both worker nodes ran runs (never the head, which has no CPU), and their scratch is gone
    assert {n.split("/")[1] for n in res.nodes.values()} == {i[:8] for i in cluster["node_ids"]}
    for node in cluster["nodes"]:
        assert node.is_dir() and not list(node.glob("fedsim-worker-*"))
    # resume and compare read the driver's copy as for any backend
    again = run_sweep(_spec(driver / "ray", data), backend="ray", workers=2)
    assert again.executed == 0 and again.skipped == 4
    from analysis.sweep import compare_sweep

    cells = compare_sweep(driver / "ray", driver / "rep")
    assert len(cells) == 4 and (cells["runs"] == 1).all()


def test_local_data_is_read_on_the_node(cluster) -> None:  # type: ignore[no-untyped-def]
    """Without shipping, workers read data.dir at its own path: here the driver's, which the guard refuses."""
    res = run_sweep(_spec(cluster["driver"] / "local", cluster["data"], grid={"protocol.fedmoe.alignment.policy": ["random"]}),
                    backend="ray", workers=1, ship_data=False)
    assert res.failed == 1
    assert "test guard" in res.index["error"][0] and "\n" not in res.index["error"][0]
    assert _violations(cluster["witness"])
    for f in cluster["witness"].glob("violation-*"):
        f.unlink()


def test_cuda_runs_on_a_cluster_without_gpus_stop_up_front(cluster) -> None:  # type: ignore[no-untyped-def]
    from fedsim.config import ScenarioError

    spec = _spec(cluster["driver"] / "gpu", cluster["data"], {"protocol.fedmoe.alignment.policy": ["random"]}, ["training.device=cuda"])
    with pytest.raises(ScenarioError, match="needs a GPU, and the Ray cluster has none") as e:
        run_sweep(spec, backend="ray")
    assert "\n" not in str(e.value)
    assert not (cluster["driver"] / "gpu" / "policy=random__seed=0").exists()


def _kill_after_first_checkpoint(ray, run_dir: Path, timeout_s: float = 240) -> str:  # type: ignore[no-untyped-def]
    """Wait until the driver holds the run's first checkpoint, then kill the sweep's actor."""
    t_end = time.monotonic() + timeout_s
    while not (run_dir / "checkpoint.json").is_file():
        assert time.monotonic() < t_end, "no checkpoint reached the driver"
        time.sleep(0.02)
    (name,) = [n for n in ray.util.list_named_actors() if n.startswith("fedsim-sweep-")]
    ray.kill(ray.get_actor(name), no_restart=True)
    return name


def test_killed_worker_resumes_from_checkpoint(cluster) -> None:  # type: ignore[no-untyped-def]
    ray, driver, data = cluster["ray"], cluster["driver"], cluster["data"]
    grid = {"protocol.fedmoe.alignment.policy": ["load_balanced"]}
    extra = ["run.rounds=6", "output.checkpoint_every_rounds=1"]
    box: dict[str, object] = {}
    th = threading.Thread(target=lambda: box.update(res=run_sweep(
        _spec(driver / "kill", data, grid, extra), backend="ray", workers=1)))
    th.start()
    try:
        _kill_after_first_checkpoint(ray, driver / "kill" / "policy=load_balanced__seed=0")
    finally:
        th.join(timeout=600)
    res = box["res"]
    assert res.failed == 0, res.index["error"].tolist()  # type: ignore[attr-defined]
    man = json.loads((driver / "kill" / "policy=load_balanced__seed=0" / "manifest.json").read_text())
    assert man["status"] == "completed" and man["resumed"] == 1 and 1 <= man["resumed_from_round"] < 6
    ref = run_sweep(_spec(driver / "kill-ref", data, grid, extra), backend="inprocess")
    _assert_runs_identical(driver / "kill-ref", driver / "kill", ["policy=load_balanced__seed=0"],
                           ignore=frozenset({"resumed", "resumed_from_round"}))
    assert ref.failed == 0 and _violations(cluster["witness"]) == []


def dying_runner(loaded: LoadedScenario, out_dir: Path) -> None:
    """Kills its worker process, as a lost node would."""
    os._exit(3)


@pytest.mark.slow
def test_run_lost_three_times_is_failed(cluster) -> None:  # type: ignore[no-untyped-def]
    """> 60 s on 2 cores: three actors start (each imports torch)."""
    res = run_sweep(_spec(cluster["driver"] / "dying", cluster["data"], grid={"protocol.fedmoe.alignment.policy": ["random"]}),
                    backend="ray", workers=1, runner=dying_runner)
    assert res.failed == 1
    err = res.index["error"][0]
    assert err.startswith("worker lost 3 times") and "\n" not in err
