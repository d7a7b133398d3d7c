"""The run directory, declared once: every table a run writes, its columns,
dtypes and units.

The run-directory writer (:func:`fedsim.api.run`) checks every frame against
its declaration before writing it (:func:`check_frame`: an undeclared table or
column, a missing required column or a wrong dtype is a
:class:`TableSchemaError` naming the table and column); ``analysis/`` reads
the list of tables from here; the README's table of files is checked against
:data:`TABLES` by a test. A new column is one line here (and a README cell if
it is worth naming there).

Dtypes: ``int`` (int64), ``float`` (float64; NaN = not measured), ``str``
(text, may be null), ``bool`` (may be null in ``events``, where a column only
concerns some event kinds); a column with no value at all passes any dtype
but ``int`` (pandas stores it as float NaN). Units: ``s`` simulated seconds, ``bytes``,
``bps`` bits per second, ``hz``, ``flops``, ``m`` metres, ``1`` a ratio or
count without unit, ``""`` text.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

__all__ = ["Column", "TableSchema", "TableSchemaError", "TABLES", "RUN_DIR_FILES", "check_frame"]


class TableSchemaError(ValueError):
    """A frame does not match its declared table (the message names table and column)."""


@dataclass(frozen=True)
class Column:
    """One declared column: ``name``, ``dtype`` (int/float/str/bool), ``unit``, ``doc``;
    ``required``: present in every file of the table (``False``: only some rows
    or some runs have it, e.g. the kind-specific columns of ``events``)."""

    name: str
    dtype: str
    unit: str
    doc: str
    required: bool = True


@dataclass(frozen=True)
class TableSchema:
    """One table of the run directory, written as ``<name>.parquet``.

    ``protocols``: the protocols that write it (``()`` = every protocol);
    ``doc``: what one row is.
    """

    name: str
    doc: str
    columns: tuple[Column, ...]
    protocols: tuple[str, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        """Declared column names, in order."""
        return tuple(c.name for c in self.columns)

    def column(self, name: str) -> Column:
        """The declared column ``name``.

        Raises:
            TableSchemaError: ``name`` is not declared for this table.
        """
        for c in self.columns:
            if c.name == name:
                return c
        raise TableSchemaError(f"table {self.name!r}: column {name!r} is not declared in fedsim/engine/tables.py")

    def blank_row(self) -> dict[str, object]:
        """A row with every required column, in order: ``nan`` for floats, 0 for ints, None otherwise."""
        fill = {"float": float("nan"), "int": 0}
        return {c.name: fill.get(c.dtype) for c in self.columns if c.required}


def _c(name: str, dtype: str, unit: str, doc: str, required: bool = True) -> Column:
    return Column(name, dtype, unit, doc, required)


_ROUNDS = TableSchema("rounds", "one row per round (nmoe: per training-stage round)", (
    _c("round", "int", "1", "round index (nmoe: every training-stage round of the run, in order)"),
    _c("t_start_s", "float", "s", "round start"),
    _c("t_end_s", "float", "s", "round end (after server compute)"),
    _c("duration_s", "float", "s", "t_end_s - t_start_s"),
    _c("accuracy", "float", "1", "global test accuracy (NaN when not evaluated)"),
    _c("f1", "float", "1", "global test macro-F1"),
    _c("auc", "float", "1", "global test macro AUC"),
    _c("accuracy_client", "float", "1", "fedmoe: per-client inference (own best experts by fitness, own test split), test-sample-weighted mean", False),
    _c("accuracy_client_rare", "float", "1", "fedmoe: accuracy_client over the clients of the two rarest groups (domain_skew)", False),
    _c("accuracy_rare", "float", "1", "fedmoe: global-gate accuracy on the test samples of the two rarest groups (domain_skew)", False),
    _c("accuracy_macro", "float", "1", "fedmoe: global-gate accuracy on the global test set, unweighted mean over groups (domain_skew)", False),
    _c("routing_nmi", "float", "1", "fedmoe: NMI between a test sample's group and the global gate's first expert (domain_skew)", False),
    _c("selected", "int", "1", "clients selected"),
    _c("completed", "int", "1", "clients whose upload arrived"),
    _c("stragglers", "int", "1", "clients cut by the deadline"),
    _c("dropouts", "int", "1", "clients that went offline or lost the link"),
    _c("ooms", "int", "1", "clients out of memory"),
    _c("skipped", "int", "1", "selected clients given no expert"),
    _c("bytes_up", "float", "bytes", "bytes uploaded by the selected clients"),
    _c("bytes_down", "float", "bytes", "bytes downloaded by the selected clients"),
    _c("clients_per_expert_cv", "float", "1", "coefficient of variation of the clients assigned to each expert (a count of clients; the paper's balance is experts.share)"),
    _c("t_download_s", "float", "s", "mean download time of completed clients"),
    _c("t_compute_s", "float", "s", "mean compute time of completed clients"),
    _c("t_upload_s", "float", "s", "mean upload time of completed clients"),
    _c("t_wait_s", "float", "s", "mean wait from a completed client's end to the round's close"),
    _c("t_server_s", "float", "s", "server time after the close (aggregation, compute)"),
    _c("online", "int", "1", "clients online when the round selected its clients"),
    _c("version", "int", "1", "global model version after this row's aggregation (sync: round + 1; nmoe: 0)"),
    _c("updates", "int", "1", "client updates folded into the model in this aggregation"),
    _c("staleness_mean", "float", "1", "mean staleness of the folded updates, in global versions (sync: 0)"),
    _c("staleness_max", "float", "1", "largest staleness of the folded updates, in global versions"),
    _c("stage", "str", "", "nmoe: training stage (extractor / experts / gate)", False),
    _c("loss", "float", "1", "nmoe: the stage round's training loss (NaN when the stage reports none)", False),
    _c("stage_round", "int", "1", "nmoe: round within its stage", False),
    _c("phase", "str", "", "nmoe: fedce / fedsc / experts / rangate / rollgate / fedgate_scoring / fedgate", False),
    _c("dp_epsilon", "float", "1", "nmoe fedsc: differential-privacy epsilon spent so far (RDP composition; NaN without DP)", False),
))

_CLIENTS = TableSchema("clients", "one row per selected client and round", (
    _c("round", "int", "1", "round index"),
    _c("client", "str", "", "client node id"),
    _c("device_class", "str", "", "device class"),
    _c("bs", "str", "", "serving base station at dispatch"),
    _c("k", "int", "1", "experts assigned"),
    _c("experts", "str", "", "assigned expert indices, comma-separated"),
    _c("status", "str", "", "completed / straggler / dropout / oom / skipped; async modes, when the run stops: "
       "buffered (arrived, not folded) / in_flight (cut, with the bytes moved so far)"),
    _c("t_dispatch_s", "float", "s", "dispatch time"),
    _c("t_download_s", "float", "s", "download duration"),
    _c("t_compute_s", "float", "s", "compute duration"),
    _c("t_upload_s", "float", "s", "upload duration"),
    _c("t_end_s", "float", "s", "time the client's round ended"),
    _c("latency_s", "float", "s", "t_end_s - t_dispatch_s"),
    _c("bytes_down", "float", "bytes", "bytes downloaded"),
    _c("bytes_up", "float", "bytes", "bytes uploaded"),
    _c("wasted_s", "float", "s", "seconds spent on a round that did not arrive"),
    _c("wasted_bytes", "float", "bytes", "bytes moved for a round that did not arrive"),
    _c("num_samples", "int", "1", "training samples held"),
    _c("flops", "float", "flops", "training FLOPs of the job"),
), ("fedmoe",))

_EVENTS = TableSchema("events", "flat event log: transfers, compute jobs, OOMs, dropouts, handovers, rounds", (
    _c("t_s", "float", "s", "event time"),
    _c("round", "int", "1", "protocol round (-1 outside rounds)"),
    _c("node", "str", "", "node the event concerns"),
    _c("kind", "str", "", "event kind (transfer, compute, oom, dropout, handover, round_start, ...)"),
    _c("bytes", "float", "bytes", "bytes moved or wasted"),
    _c("seconds", "float", "s", "duration"),
    _c("dst", "str", "", "transfer destination", False),
    _c("tag", "str", "", "transfer / job tag (download, upload, train, nmoe_latent, ...)", False),
    _c("completed", "bool", "", "the transfer or job completed", False),
    _c("mean_rate_bps", "float", "bps", "mean transfer rate", False),
    _c("cause", "str", "", "interrupt cause class name", False),
    _c("flops", "float", "flops", "FLOPs of a compute job", False),
    _c("flops_done", "float", "flops", "FLOPs done before an interruption", False),
    _c("src_bs", "str", "", "handover: old base station", False),
    _c("dst_bs", "str", "", "handover: new base station", False),
    _c("phase", "str", "", "client_lost: phase the client was in", False),
    _c("status", "str", "", "client_lost: the client's status", False),
    _c("updates", "float", "1", "aggregate: updates folded in", False),
    _c("rejected", "float", "1", "aggregate: updates rejected", False),
    _c("reason", "str", "", "dropout / rejected_update reason", False),
    _c("interrupted", "float", "1", "jobs or flows interrupted", False),
    _c("available_bytes", "float", "bytes", "oom: memory available", False),
    _c("width", "float", "1", "subnetwork: expert width ratio given to the client (protocol.fedmoe.expert_widths)", False),
))

_LINKS = TableSchema("links", "per link and sampling interval (the last partial one included; idle intervals as zeros once a link has carried traffic): mean load, bytes, utilisation", (
    _c("t_s", "float", "s", "end of the sampling interval"),
    _c("interval_s", "float", "s", "length of the interval (the last one may be shorter)"),
    _c("link", "str", "", "link name"),
    _c("kind", "str", "", "link kind"),
    _c("node", "str", "", "node the link belongs to"),
    _c("capacity_bps", "float", "bps", "capacity"),
    _c("load_bps", "float", "bps", "mean load"),
    _c("bytes", "float", "bytes", "bytes carried in the interval (per link they sum to edges.bytes_carried)"),
    _c("utilisation", "float", "1", "load / capacity"),
    _c("flows", "int", "1", "flows at the sample"),
))

_NODES = TableSchema("nodes", "topology nodes with positions", (
    _c("node", "str", "", "node id"),
    _c("kind", "str", "", "client / bs / edge / cloud ..."),
    _c("device_class", "str", "", "device class (clients)"),
    _c("x", "float", "m", "position x"),
    _c("y", "float", "m", "position y"),
    _c("z", "float", "m", "height"),
    _c("tx_power_dbm", "float", "dBm", "transmit power the run used (cells and clients; NaN elsewhere)", required=False),
    _c("bandwidth_up_hz", "float", "hz", "uplink bandwidth of a cell (NaN for other nodes)", required=False),
    _c("bandwidth_down_hz", "float", "hz", "downlink bandwidth of a cell (NaN for other nodes)", required=False),
))

_EDGES = TableSchema("edges", "topology edges with bytes carried", (
    _c("src", "str", "", "one end"),
    _c("dst", "str", "", "other end"),
    _c("kind", "str", "", "wired / radio kind"),
    _c("capacity_bps", "float", "bps", "capacity (NaN for radio cells)"),
    _c("capacity_hz", "float", "hz", "radio bandwidth (NaN for wires)"),
    _c("bytes_carried", "float", "bytes", "bytes carried over the run"),
    _c("link", "str", "", "link name, as in the links table (client access caps: CLIENT/cap_up, CLIENT/cap_down)"),
))

_ASSIGNMENTS = TableSchema("assignments", "(round, client, expert) pairs: the client x expert assignment of every round", (
    _c("round", "int", "1", "round index"),
    _c("client", "str", "", "client node id"),
    _c("expert", "int", "1", "expert index"),
), ("fedmoe",))

_EXPERTS = TableSchema("experts", "per-round, per-expert load and usage", (
    _c("round", "int", "1", "round index"),
    _c("expert", "int", "1", "expert index"),
    _c("clients", "int", "1", "clients assigned the expert"),
    _c("samples", "float", "1", "training samples routed to it in the aggregation"),
    _c("usage", "float", "1", "decayed usage in the alignment state"),
    _c("share", "float", "1", "share of the round's routed training samples that went to the expert (NaN: none routed)", False),
    _c("share_cum", "float", "1", "share of all routed training samples since round 0 that went to the expert", False),
    _c("updates", "int", "1", "updates holding the expert folded into this aggregation"),
    _c("staleness_mean", "float", "1", "mean staleness of those updates, in the expert's own versions (NaN: none)"),
    _c("staleness_max", "float", "1", "largest staleness of those updates, in the expert's own versions"),
), ("fedmoe",))

_UPDATES = TableSchema("updates", "one row per folded update and component (expert, or -1 for the shared backbone and gate)", (
    _c("version", "int", "1", "global version the update produced (its aggregation's rounds.version)"),
    _c("client", "str", "", "client node id"),
    _c("expert", "int", "1", "expert index; -1 = shared backbone and gate"),
    _c("t_dispatch_s", "float", "s", "dispatch (download start) of the client's work"),
    _c("t_arrival_s", "float", "s", "upload arrival at the server"),
    _c("staleness", "int", "1", "versions of this component aggregated between download and aggregation"),
    _c("staleness_weight", "float", "1", "staleness weight s(staleness) applied (sync: 1)"),
), ("fedmoe",))

_PERSONAL = TableSchema("personal", "each client's personalised accuracy on its own test split", (
    _c("client", "str", "", "client node id"),
    _c("accuracy", "float", "1", "accuracy on its own test split"),
    _c("num_test", "int", "1", "test samples"),
    _c("num_train", "int", "1", "training samples"),
    _c("group", "int", "1", "domain_skew: the client's group (-1 for other partitions)", False),
), ("fedmoe",))

_REQUESTS = TableSchema("requests", "one row per nmoe inference request", (
    _c("request", "int", "1", "request id"),
    _c("client", "str", "", "origin client"),
    _c("t_s", "float", "s", "issue time"),
    _c("latency_s", "float", "s", "issue -> combined answer"),
    _c("t_extract_s", "float", "s", "queue + extraction at the origin"),
    _c("t_network_s", "float", "s", "both transfers of the critical branch"),
    _c("t_queue_s", "float", "s", "wait for the owner's compute (critical branch)"),
    _c("t_expert_s", "float", "s", "expert compute (critical branch)"),
    _c("bytes", "float", "bytes", "all transfers of the request"),
    _c("experts", "str", "", "expert indices, comma-separated"),
    _c("local", "bool", "", "the origin's own expert was used"),
    _c("remote", "int", "1", "remote experts used"),
    _c("completed", "bool", "", "every transfer completed"),
    _c("failed", "int", "1", "branches whose transfer failed"),
    _c("correct", "bool", "", "the combined answer is the true label"),
    _c("fail_reason", "str", "", "why the request failed: '' (it did not), timeout, or the failed transfer's status", False),
), ("nmoe",))

_NMOE_EVAL = TableSchema("nmoe_eval", "the trained NMoE on own and global test sets", (
    _c("extractor", "str", "", "stage-1 method (fedce / fedsc)"),
    _c("gate", "str", "", "stage-3 method (rangate / rollgate / fedgate)"),
    _c("test", "str", "", "own / global"),
    _c("accuracy", "float", "1", "accuracy"),
    _c("f1", "float", "1", "macro-F1"),
    _c("auc", "float", "1", "macro AUC"),
    _c("lr", "float", "1", "local ratio: share of requests routed to the own expert"),
    _c("dp_epsilon", "float", "1", "fedsc: epsilon spent over all stage-1 rounds, RDP bound (NaN without DP)", False),
    _c("dp_epsilon_exact", "float", "1", "fedsc: the same total, exact (Gaussian-DP composition of the releases; NaN without DP)", False),
    _c("experts_untrained", "int", "1", "clients whose expert stage 2 left at its initial state (their part never completed)", False),
    _c("retry_wait_s", "float", "s", "simulated seconds the stages waited between attempts for clients to come back (0: one attempt)", False),
    _c("stage1_s", "float", "s", "simulated seconds of stage 1 (extractor)", False),
    _c("stage2_s", "float", "s", "simulated seconds of stage 2 (experts)", False),
    _c("stage3_s", "float", "s", "simulated seconds of stage 3 (gate)", False),
    _c("train_s", "float", "s", "simulated seconds of the three stages", False),
    _c("stage1_bytes", "float", "bytes", "bytes moved in stage 1", False),
    _c("stage2_bytes", "float", "bytes", "bytes moved in stage 2", False),
    _c("stage3_bytes", "float", "bytes", "bytes moved in stage 3", False),
    _c("train_bytes", "float", "bytes", "bytes moved by the three stages", False),
), ("nmoe",))

_NMOE_STAGE1 = TableSchema("nmoe_stage1", "stage-1 (feature extractor) training loss per round", (
    _c("extractor", "str", "", "stage-1 method"),
    _c("round", "int", "1", "stage-1 round"),
    _c("loss", "float", "1", "mean training loss"),
), ("nmoe",))

_NMOE_INFERENCE = TableSchema("nmoe_inference", "one-row summary of the inference traffic", (
    _c("n", "float", "1", "requests served"),
    _c("p50_s", "float", "s", "median latency", False),
    _c("p95_s", "float", "s", "95th percentile latency", False),
    _c("p99_s", "float", "s", "99th percentile latency", False),
    _c("mean_s", "float", "s", "mean latency", False),
    _c("bytes_per_request", "float", "bytes", "mean bytes per request", False),
    _c("local_share", "float", "1", "requests that used the own expert", False),
    _c("accuracy", "float", "1", "share of correct answers", False),
    _c("skipped_offline", "float", "1", "arrivals dropped at an offline origin"),
    _c("completed_share", "float", "1", "requests whose transfers all completed"),
), ("nmoe",))

#: Every table a run may write, by name (file ``<name>.parquet``).
TABLES: dict[str, TableSchema] = {
    t.name: t
    for t in (
        _ROUNDS, _CLIENTS, _EVENTS, _LINKS, _NODES, _EDGES, _ASSIGNMENTS, _EXPERTS, _UPDATES, _PERSONAL,
        _REQUESTS, _NMOE_EVAL, _NMOE_STAGE1, _NMOE_INFERENCE,
    )
}

#: Every file of a run directory besides the tables.
#: (``model.pt``: the final model; ``alignment.json``: fedmoe's alignment measures; ``checkpoint.*``: only while a run is unfinished, see
#: :mod:`fedsim.engine.checkpoint`.)
RUN_DIR_FILES: tuple[str, ...] = ("manifest.json", "figures/", "error.txt", "report.html", "tensorboard/", "model.pt", "checkpoint.json", "checkpoint.log", "alignment.json")

_KINDS = {"int": "iu", "float": "f", "bool": "b"}


def _dtype_ok(col: Column, s: pd.Series) -> bool:
    """Whether series ``s`` holds values of ``col.dtype`` (nulls allowed except in int columns)."""
    kind = s.dtype.kind
    if col.dtype != "int" and s.isna().all():
        return True  # a column no row filled (pandas makes it float NaN): nothing to check
    if col.dtype in _KINDS and kind in _KINDS[col.dtype]:
        return True
    if col.dtype == "float" and kind in "iu":
        return False
    vals = s.dropna()
    if kind != "O" or vals.empty:
        return kind == "O" and col.dtype != "int"
    if col.dtype == "str":
        return all(isinstance(v, str) for v in vals)
    if col.dtype == "bool":
        return all(isinstance(v, (bool, np.bool_)) for v in vals)
    return False


def check_frame(name: str, df: pd.DataFrame) -> None:
    """Check frame ``df`` of table ``name`` against its declaration.

    Raises:
        TableSchemaError: the table is not declared, a column is not declared or
            has the wrong dtype, or a required column is missing (the message
            names the table and the column).
    """
    if name not in TABLES:
        raise TableSchemaError(f"table {name!r} is not declared in fedsim/engine/tables.py")
    t = TABLES[name]
    for col in df.columns:
        decl = t.column(str(col))
        if len(df) and not _dtype_ok(decl, df[col]):
            raise TableSchemaError(f"table {name!r}: column {col!r} has dtype {df[col].dtype} where {decl.dtype} is declared")
    if len(df):
        missing = [c.name for c in t.columns if c.required and c.name not in df.columns]
        if missing:
            raise TableSchemaError(f"table {name!r}: required column {missing[0]!r} is missing")
