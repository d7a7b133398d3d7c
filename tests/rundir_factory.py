"""Synthetic run directories that follow the run-directory contract exactly.

Used by the analysis tests; reusable by anyone who needs a run directory
without running the simulator::

    from tests.rundir_factory import make_run_dir
    run = make_run_dir(tmp_path / "r", rounds=8, n_clients=20)
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

STATUSES = ("completed", "straggler", "dropout", "oom", "skipped")
DEVICE_CLASSES = ("phone", "tablet", "laptop", "jetson")


def make_run_dir(
    path: str | Path,
    *,
    name: str = "synthetic",
    protocol: str = "fedmoe",
    policy: str = "fitness",
    seed: int = 0,
    rounds: int = 10,
    n_clients: int = 24,
    n_bs: int = 3,
    n_experts: int = 6,
    clients_per_round: int = 8,
    eval_every: int = 1,
    accuracy: Sequence[float] | None = None,
    round_durations: Sequence[float] | None = None,
    omit: Iterable[str] = (),
    requests: bool | None = None,
    status: str = "completed",
) -> Path:
    """Write a small, deterministic run directory and return its path.

    Args:
        path: directory to create (parents too).
        accuracy: per-round accuracy (length ``rounds``); default a rising curve.
            Rounds not divisible by ``eval_every`` get NaN metrics.
        round_durations: per-round duration in simulated seconds; default random 50..150 s.
        omit: table names (``"clients"``, ``"links"``, ...) not to write.
        requests: write ``requests.parquet``; default: only for ``protocol == "nmoe"``.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    omit = set(omit)
    if requests is None:
        requests = protocol == "nmoe"

    clients = [f"c{i:03d}" for i in range(n_clients)]
    dev_of = {c: DEVICE_CLASSES[i % len(DEVICE_CLASSES)] for i, c in enumerate(clients)}
    bss = [f"bs{j}" for j in range(n_bs)]
    bs_of = {c: bss[i % n_bs] for i, c in enumerate(clients)}

    if accuracy is None:
        accuracy = [0.9 - 0.8 * np.exp(-0.35 * (r + 1)) for r in range(rounds)]
    if round_durations is None:
        round_durations = list(rng.uniform(50.0, 150.0, size=rounds))
    assert len(accuracy) == rounds and len(round_durations) == rounds

    round_rows, client_rows, event_rows, assign_rows, expert_rows = [], [], [], [], []
    t = 0.0
    usage = np.ones(n_experts)
    for r in range(rounds):
        dur = float(round_durations[r])
        t0, t1 = t, t + dur
        sel = rng.choice(n_clients, size=min(clients_per_round, n_clients), replace=False)
        counts = dict.fromkeys(STATUSES, 0)
        phases = {"d": [], "c": [], "u": [], "w": []}
        bytes_up = bytes_down = 0.0
        load = np.zeros(n_experts)
        samples = np.zeros(n_experts)
        for ci in sorted(sel):
            c = clients[ci]
            st = str(rng.choice(STATUSES, p=[0.7, 0.12, 0.08, 0.05, 0.05]))
            counts[st] += 1
            k = int(rng.integers(1, 4))
            ex = sorted(rng.choice(n_experts, size=k, replace=False).tolist())
            n_samp = int(rng.integers(50, 500))
            d = float(rng.uniform(0.02, 0.08) * dur) if st != "skipped" else 0.0
            active = st in ("completed", "straggler")
            comp = float(rng.uniform(0.1, 0.6) * dur) if active else 0.0
            up = float(rng.uniform(0.02, 0.08) * dur) if active else 0.0
            if st == "dropout":
                comp = float(rng.uniform(0.0, 0.1) * dur)
            lat = d + comp + up
            if st == "completed":
                lat = min(lat, dur - 1.0)
            elif st == "straggler":
                lat = dur + float(rng.uniform(1, 30))
            t_end = t0 + lat
            bdown = 4e6 * k if st != "skipped" else 0.0
            bup = 2e6 * k if st == "completed" else 0.0
            wasted = 0.0 if st == "completed" else lat
            client_rows.append(
                dict(
                    round=r,
                    client=c,
                    device_class=dev_of[c],
                    bs=bs_of[c],
                    k=k,
                    experts=",".join(map(str, ex)),
                    status=st,
                    t_dispatch_s=t0,
                    t_download_s=d,
                    t_compute_s=comp,
                    t_upload_s=up,
                    t_end_s=t_end,
                    latency_s=lat,
                    bytes_down=bdown,
                    bytes_up=bup,
                    wasted_s=wasted,
                    wasted_bytes=0.0 if st == "completed" else bdown,
                    num_samples=n_samp,
                )
            )
            bytes_down += bdown
            bytes_up += bup
            if st == "completed":
                phases["d"].append(d)
                phases["c"].append(comp)
                phases["u"].append(up)
                phases["w"].append(t1 - t_end)
                for e in ex:
                    load[e] += 1
                    samples[e] += n_samp / k
            for e in ex:
                assign_rows.append(dict(round=r, client=c, expert=e))
            # transfers as the simulator records them: at their end, with tag and peer
            event_rows.append(
                dict(t_s=t0 + d, round=r, node="cloud", dst=c, tag="download", kind="transfer", bytes=bdown, seconds=d)
            )
            if bup > 0:
                event_rows.append(
                    dict(t_s=t_end, round=r, node=c, dst="cloud", tag="upload", kind="transfer", bytes=bup, seconds=up)
                )
            if st in ("dropout", "oom"):
                event_rows.append(dict(t_s=t_end, round=r, node=c, kind=st, bytes=0.0, seconds=0.0))
        usage = 0.8 * usage + load
        for e in range(n_experts):
            expert_rows.append(
                dict(
                    round=r,
                    expert=e,
                    clients=int(load[e]),
                    samples=int(samples[e]),
                    usage=float(usage[e]),
                )
            )
        evaluated = r % eval_every == 0 or r == rounds - 1
        acc = float(accuracy[r]) if evaluated else float("nan")
        cv = float(load.std() / load.mean()) if load.mean() > 0 else 0.0

        def _m(v: list[float]) -> float:
            return float(np.mean(v)) if v else 0.0

        round_rows.append(
            dict(
                round=r,
                t_start_s=t0,
                t_end_s=t1,
                duration_s=dur,
                accuracy=acc,
                f1=acc - 0.02 if evaluated else float("nan"),
                auc=min(1.0, acc + 0.05) if evaluated else float("nan"),
                selected=len(sel),
                completed=counts["completed"],
                stragglers=counts["straggler"],
                dropouts=counts["dropout"],
                ooms=counts["oom"],
                bytes_up=bytes_up,
                bytes_down=bytes_down,
                clients_per_expert_cv=cv,
                t_download_s=_m(phases["d"]),
                t_compute_s=_m(phases["c"]),
                t_upload_s=_m(phases["u"]),
                t_wait_s=_m(phases["w"]),
            )
        )
        event_rows.append(
            dict(t_s=t0, round=r, node="cloud", kind="round_start", bytes=0.0, seconds=0.0)
        )
        event_rows.append(
            dict(t_s=t1, round=r, node="cloud", kind="round_end", bytes=0.0, seconds=dur)
        )
        t = t1

    rounds_df = pd.DataFrame(round_rows)
    for col in ("selected", "completed", "stragglers", "dropouts", "ooms", "round"):
        rounds_df[col] = rounds_df[col].astype("int64")
    tables: dict[str, pd.DataFrame] = {
        "rounds": rounds_df,
        "clients": pd.DataFrame(client_rows),
        "events": pd.DataFrame(event_rows),
        "assignments": pd.DataFrame(assign_rows, columns=["round", "client", "expert"]),
        "experts": pd.DataFrame(expert_rows),
    }

    # links: periodic samples for each bs uplink/downlink and one wired link
    link_rows = []
    for ts in np.linspace(0.0, t, 40):
        for j, b in enumerate(bss):
            for kind, cap in (("uplink", 50e6), ("downlink", 200e6)):
                u = float(np.clip(0.5 + 0.4 * np.sin(ts / 200.0 + j) + rng.normal(0, 0.05), 0, 1))
                link_rows.append(
                    dict(
                        t_s=float(ts),
                        link=f"{b}-{kind}",
                        kind=kind,
                        node=b,
                        capacity_bps=cap,
                        load_bps=u * cap,
                        utilisation=u,
                    )
                )
        link_rows.append(
            dict(
                t_s=float(ts),
                link="edge0-cloud",
                kind="wired",
                node="edge0",
                capacity_bps=1e9,
                load_bps=1e8,
                utilisation=0.1,
            )
        )
    tables["links"] = pd.DataFrame(link_rows)

    # topology
    node_rows = [
        dict(node="cloud", kind="cloud", device_class=None, x=0.0, y=1500.0, z=0.0),
        dict(node="edge0", kind="edge", device_class=None, x=0.0, y=700.0, z=0.0),
    ]
    edge_rows = [dict(src="edge0", dst="cloud", kind="wired", capacity_bps=1e10, bytes_carried=5e9)]
    for j, b in enumerate(bss):
        ang = 2 * np.pi * j / n_bs
        bx, by = 600 * np.cos(ang), 600 * np.sin(ang)
        node_rows.append(
            dict(
                node=b,
                kind="bs_macro" if j == 0 else "bs_small",
                device_class=None,
                x=bx,
                y=by,
                z=25.0,
            )
        )
        edge_rows.append(
            dict(
                src=b,
                dst="edge0",
                kind="wired",
                capacity_bps=1e9,
                bytes_carried=float(1e8 * (j + 1)),
            )
        )
    for c in clients:
        j = bss.index(bs_of[c])
        ang = 2 * np.pi * j / n_bs
        x = 600 * np.cos(ang) + rng.normal(0, 150)
        y = 600 * np.sin(ang) + rng.normal(0, 150)
        node_rows.append(dict(node=c, kind="client", device_class=dev_of[c], x=x, y=y, z=1.5))
        edge_rows.append(
            dict(
                src=c,
                dst=bs_of[c],
                kind="wireless",
                capacity_bps=2e7,
                bytes_carried=float(rng.uniform(1e6, 1e8)),
            )
        )
    tables["nodes"] = pd.DataFrame(node_rows)
    tables["edges"] = pd.DataFrame(edge_rows)

    if requests:
        req_rows = []
        for q in range(200):
            c = clients[int(rng.integers(n_clients))]
            local = bool(rng.random() < 0.3)
            ex = (
                [c] if local else sorted({clients[int(i)] for i in rng.integers(n_clients, size=2)})
            )
            te, tn, tq, tx = (float(rng.exponential(s)) for s in (0.005, 0.05, 0.02, 0.01))
            if local:
                tn = tq = 0.0
            req_rows.append(
                dict(
                    request=q,
                    client=c,
                    t_s=float(rng.uniform(0, t)),
                    latency_s=te + tn + tq + tx,
                    t_extract_s=te,
                    t_network_s=tn,
                    t_queue_s=tq,
                    t_expert_s=tx,
                    bytes=0.0 if local else 4096.0,
                    experts=",".join(ex),
                    local=local,
                )
            )
        tables["requests"] = pd.DataFrame(req_rows)
    if protocol == "nmoe":
        omit |= {"assignments"}

    for tname, df in tables.items():
        if tname not in omit:
            _conform(tname, df).to_parquet(path / f"{tname}.parquet", index=False)

    scenario = {
        "run": {"name": name, "seed": seed, "rounds": rounds},
        "protocol": {"name": protocol, "fedmoe": {"alignment": {"policy": policy if protocol == "fedmoe" else None}}},
    }
    manifest = {
        "fedsim_version": "0.1.0",
        "scenario": scenario,
        "seed": seed,
        "git_revision": "deadbeef",
        "versions": {"python": "3.x"},
        "started_at": "2026-01-01T00:00:00Z",
        "finished_at": "2026-01-01T00:01:00Z",
        "wall_s": 60.0,
        "status": status,
    }
    (path / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return path


def _conform(name: str, df: pd.DataFrame) -> pd.DataFrame:
    """``df`` as the declared table ``name`` (fedsim/engine/tables.py): the required columns the
    synthetic rows leave out get a blank (NaN, 0, False, ""), every column its declared dtype
    (tests/test_rundir_contract.py checks the result with ``check_frame``)."""
    from fedsim.engine.tables import TABLES

    fill = {"float": float("nan"), "int": 0, "bool": False, "str": ""}
    cast = {"float": "float64", "int": "int64", "bool": "bool"}
    for c in TABLES[name].columns:
        if c.name not in df.columns and c.required:
            df[c.name] = fill.get(c.dtype)
        if c.name in df.columns and c.dtype in cast:
            df[c.name] = df[c.name].astype(cast[c.dtype])
    return df
