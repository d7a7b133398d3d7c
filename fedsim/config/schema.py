"""The scenario schema: every key, its type, unit, range and default, in one place.

A scenario file is YAML with the top-level sections below. Unknown keys are
errors, types are checked strictly (a string is never silently turned into a
number), and cross-field rules live in :mod:`fedsim.config.rules`.
``fedsim defaults`` prints the fully defaulted scenario.

Units are in the key names: ``_s`` seconds, ``_bps`` bits per second,
``_hz`` hertz, ``_db``/``_dbm`` decibels, ``_m`` metres, ``_gb`` gibibytes,
``flops`` floating-point operations (per second where stated).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from fedsim.config.registry import AGGREGATION_MODES

#: ``protocol.fedmoe.aggregation``: the names registered in :data:`fedsim.config.registry.AGGREGATION_MODES`.
AggregationMode = Literal[tuple(AGGREGATION_MODES)]  # type: ignore[valid-type]

__all__ = [
    "Scenario",
    "RunConfig",
    "TopologyConfig",
    "GridConfig",
    "BaseStationSite",
    "ChannelConfig",
    "DevicesConfig",
    "DeviceClassConfig",
    "DataConfig",
    "ModelConfig",
    "TrainingConfig",
    "ProtocolConfig",
    "FedMoEConfig",
    "NMoEConfig",
    "AlignmentConfig",
    "CapacityConfig",
    "EvaluationConfig",
    "OutputConfig",
    "DEVICE_CLASSES",
    "defaults_of",
]

DEVICE_CLASSES = ("vehicle", "drone", "camera", "sensor", "phone")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, validate_default=True)


PosFloat = float  # documented alias; ranges are enforced with Field(gt=..)


class RunConfig(_Strict):
    """``run``: identity and length of the run."""

    name: str = Field("fedsim-run", min_length=1, description="Run name, used for the run directory.")
    seed: int = Field(0, ge=0, le=2**63 - 1, description="Root seed; every random stream derives from it.")
    rounds: int = Field(20, ge=1, le=100_000, description="Federated rounds (fedmoe) or training rounds per stage (nmoe).")
    horizon_s: float | None = Field(None, gt=0, le=3.2e7, description="Optional cap on simulated time in seconds.")


class BaseStationSite(_Strict):
    """One base station at a grid intersection."""

    ix: int = Field(ge=0, le=200, description="Intersection column index (0..blocks_x).")
    iy: int = Field(ge=0, le=200, description="Intersection row index (0..blocks_y).")
    kind: Literal["macro", "small"] = Field("macro", description="Macro cell or small cell.")


class GridConfig(_Strict):
    """``topology.grid``: the Manhattan street-grid generator."""

    blocks_x: int = Field(3, ge=1, le=200, description="Blocks along x.")
    blocks_y: int = Field(3, ge=1, le=200, description="Blocks along y.")
    block_m: float = Field(200.0, ge=1.0, le=5000.0, description="Block edge length in metres.")
    base_stations: list[BaseStationSite] = Field(
        default_factory=lambda: [BaseStationSite(ix=0, iy=0), BaseStationSite(ix=3, iy=3), BaseStationSite(ix=0, iy=3, kind="small"),
                                 BaseStationSite(ix=3, iy=0, kind="small"), BaseStationSite(ix=1, iy=1, kind="small"),
                                 BaseStationSite(ix=2, iy=2, kind="small")],
        min_length=1,
        description="Base-station sites at intersections (default: two macros and four small cells, so that a typical client's uplink is not in outage).",
    )
    clients: dict[str, Annotated[int, Field(ge=0, le=10_000_000)]] = Field(
        default_factory=lambda: {"vehicle": 4, "drone": 2, "camera": 4, "sensor": 4, "phone": 6},
        description="Number of clients per device class.",
    )
    backhaul_bps: float = Field(10e9, ge=1e3, le=1e13, description="Capacity of each base station's backhaul to the metro core, bit/s.")
    backhaul_latency_s: float = Field(1e-3, ge=0, le=10.0, description="One-way latency of the backhaul, s.")
    edge_bps: float = Field(10e9, ge=1e3, le=1e13, description="Capacity of the base station -> co-located edge server link, bit/s.")
    edge_latency_s: float = Field(1e-4, ge=0, le=10.0, description="Latency of the base station -> edge server link, s.")
    cloud_bps: float = Field(40e9, ge=1e3, le=1e13, description="Capacity of the core -> cloud WAN link shared by every cell, bit/s.")
    cloud_latency_s: float = Field(10e-3, ge=0, le=10.0, description="One-way latency of the core -> cloud link, s.")


class TopologyConfig(_Strict):
    """``topology``: how the network graph is built."""

    kind: Literal["manhattan_grid", "explicit", "graphml"] = Field("manhattan_grid", description='manhattan_grid: generated street grid; explicit: nodes/edges lists; graphml: a file.')
    server: str = Field("cloud", min_length=1, description="Node id of the federated server.")
    grid: GridConfig = Field(default_factory=GridConfig)
    nodes: list[dict] = Field(default_factory=list, description="explicit: node dicts (id, kind: cloud / edge / macro / small / client, x, y, z in m, device_class; bs_macro / bs_small accepted with a hint).")
    edges: list[dict] = Field(default_factory=list, description="explicit: wired edges (src, dst, capacity_bps, latency_s).")
    graphml: str | None = Field(None, description="graphml: path to a GraphML file (relative to the scenario file).")


class ChannelConfig(_Strict):
    """``channel``: the wireless access channel of every cell (mirrors :class:`fedsim.net.params.ChannelParams`)."""

    model: Literal["umi", "uma", "free_space", "log_distance", "umi_av", "uma_av"] = Field("umi", description="Path-loss model, a name in fedsim.net.channel.CHANNEL_MODELS: umi / uma (3GPP TR 38.901 UMi street canyon / UMa, LOS drawn from the model's LOS probability), free_space, log_distance, umi_av / uma_av (the same below 22.5 m; aerial UEs above it by 3GPP TR 36.777 Annex B).")
    fc_ghz: float = Field(3.5, gt=0.5, le=100.0, description="Carrier frequency, GHz.")
    bandwidth_up_hz: float = Field(20e6, ge=1e3, le=2e9, description="Uplink bandwidth of a cell, Hz, shared by its active flows.")
    bandwidth_down_hz: float = Field(20e6, ge=1e3, le=2e9, description="Downlink bandwidth of a cell, Hz, shared by its active flows.")
    bs_tx_power_macro_dbm: float = Field(46.0, ge=-30, le=80, description="Macro base-station transmit power, dBm.")
    bs_tx_power_small_dbm: float = Field(30.0, ge=-30, le=80, description="Small-cell transmit power, dBm.")
    bs_height_macro_m: float = Field(25.0, gt=0, le=300, description="Macro antenna height, m.")
    bs_height_small_m: float = Field(10.0, gt=0, le=300, description="Small-cell antenna height, m.")
    noise_figure_db: float = Field(7.0, ge=0, le=30, description="Receiver noise figure, dB (thermal noise is -174 dBm/Hz).")
    shadowing_std_db: float | None = Field(None, ge=0, le=20, description="Log-normal shadowing std, dB (null: the model's default LOS/NLOS std: umi 4/7.82, uma 4/6, free_space 0/0, log_distance 8/8, umi_av 4/7.82, uma_av 4/6; TR 36.777 height-dependent aerial values are not applied).")
    shadowing_decorrelation_m: float = Field(50.0, gt=0, le=1000.0, description="Shadowing decorrelation distance for moving clients, m (13 m gave handover ping-pong).")
    log_distance_exponent: float = Field(3.0, gt=1, le=8, description="log_distance: path-loss exponent.")
    fading: Literal["rayleigh", "rician", "none"] = Field("rayleigh", description="Block fading of the serving link.")
    rician_k_db: float = Field(9.0, ge=-20, le=40, description="Rician K factor, dB.")
    coherence_s: float = Field(1.0, ge=1e-3, le=3600.0, description="Coherence interval: fading is redrawn every this many seconds.")
    outage_sinr_db: float = Field(-5.0, ge=-30, le=30, description="Below this SINR a flow stalls until the channel recovers, dB.")
    max_spectral_efficiency_bps_hz: float = Field(7.4, gt=0, le=30, description="Cap of log2(1+SINR), bit/s/Hz (256-QAM ~ 7.4).")
    interference_margin_db: float = Field(0.0, ge=0, le=40, description="Extra noise rise on every link, dB.")
    interference_load_factor: float = Field(0.0, ge=0, le=1, description="Downlink inter-cell interference: share of time other cells transmit.")
    handover_hysteresis_db: float = Field(3.0, ge=0, le=20, description="Hand over when another cell is better by this margin, dB.")
    handover_time_to_trigger_s: float = Field(2.0, ge=0, le=10.0, description="A better cell must stay better this long before a handover, s.")
    access_latency_s: float = Field(1e-3, ge=0, le=1.0, description="One-way latency of the radio hop, s.")
    max_ue_height_m: float = Field(22.5, gt=0, le=300.0, description="Terminal heights are clamped to this inside UMi/UMa (their validity range).")
    nearest_bs: int = Field(0, ge=0, le=10_000, description="Approximation for large deployments: a moving client re-evaluates only its k nearest cells (0 = exact; 32 changed handovers by ~2% at 10,000 clients).")
    small_bandwidth_up_hz: float | None = Field(None, gt=0, le=1e9, description="Uplink bandwidth of a small cell, Hz (null: bandwidth_up_hz, the macro value).")
    small_bandwidth_down_hz: float | None = Field(None, gt=0, le=1e9, description="Downlink bandwidth of a small cell, Hz (null: bandwidth_down_hz).")
    attachment: Literal["downlink", "uplink"] = Field("uplink", description="Cell selection and handover by downlink received power, or by uplink SNR (default: a client near a strong macro is often better heard by a small cell; by downlink power 21-31 of 100 clients on the default grid had their mean uplink in outage, by uplink SNR with the default cells 0-1).")
    population: Literal["eager", "lazy"] = Field("eager", description="eager: every client's position, fading and serving cell advance periodically (the reference); lazy: evaluated on demand, for clients with flows or at selection, and the devices are columns whose availability, background load and memory pressure are functions of (device, time), so idle clients cost no events (fedsim.net.population, fedsim.devices.population).")


class DeviceClassConfig(_Strict):
    """``devices.classes.<class>``: overrides of a device class's defaults (omitted keys keep them).

    Defaults per class are in :func:`fedsim.devices.params.default_device_classes`.
    """

    flops_mean: float | None = Field(None, ge=1e3, le=1e16, description="Mean effective training speed, FLOP/s.")
    flops_cv: float | None = Field(None, ge=0, le=5, description="Coefficient of variation of speed across devices of the class.")
    background_load_mean: float | None = Field(None, ge=0, lt=1, description="Mean share of compute taken by background work.")
    background_load_change_mean_s: float | None = Field(None, ge=1e-3, le=1e8, description="Mean time between background-load changes, s.")
    memory_gb: float | None = Field(None, gt=0, le=4096.0, description="Device memory, GB (1e9 bytes).")
    memory_pressure_levels: list[Annotated[float, Field(ge=0, lt=1)]] | None = Field(None, min_length=1, description="Share of memory used by other apps in each pressure state.")
    memory_pressure_mean_hold_s: list[Annotated[float, Field(ge=1e-3, le=1e9)]] | None = Field(None, min_length=1, description="Mean sojourn in each pressure state, s.")
    oom_mode: Literal["kill", "swap"] | None = Field(None, description="On a memory-pressure rise during a job: kill it or slow it by swapping.")
    swap_slowdown: float | None = Field(None, ge=1, le=1000.0, description="Speed divisor while swapping.")
    mean_on_s: float | None = Field(None, ge=1e-3, le=1e9, description="Mean online session length, s.")
    mean_off_s: float | None = Field(None, ge=1e-3, le=1e9, description="Mean offline period, s.")
    transfer_hazard_per_s: float | None = Field(None, ge=0, le=1000.0, description="Failure rate during transfers, 1/s.")
    mobility: Literal["static", "street", "fly", "walk", "highway"] | None = Field(None, description="Mobility model (highway: along the grid's x axis on the client's own road, turning back at its ends).")
    speed_min_mps: float | None = Field(None, ge=0, le=150.0, description="Minimum speed when moving, m/s.")
    speed_max_mps: float | None = Field(None, ge=0, le=150.0, description="Maximum speed when moving, m/s.")
    altitude_min_m: float | None = Field(None, ge=0, le=10_000.0, description="Lowest altitude / antenna height, m.")
    altitude_max_m: float | None = Field(None, ge=0, le=10_000.0, description="Highest altitude / antenna height, m.")
    tx_power_dbm: float | None = Field(None, ge=-30, le=40, description="Uplink transmit power, dBm.")


class DevicesConfig(_Strict):
    """``devices``: device classes and behaviour processes."""

    classes: dict[str, DeviceClassConfig] = Field(default_factory=dict, description="Per-class overrides; keys are device classes.")
    availability_trace: str | None = Field(None, description="FedScale availability trace (pickle) to drive on/off behaviour.")
    capacity_trace: str | None = Field(None, description="FedScale device-capacity trace (pickle): per client, the training speed (computation, ms per sample) and an access-link rate cap in each direction (communication, kbit/s); trace ids are dealt to the sorted clients in turn.")
    mobility_interval_s: float = Field(1.0, ge=1e-3, le=3600.0, description="Position update interval for moving clients, s.")
    background_load: bool = Field(True, description="Slow devices by a stochastic background load.")
    memory_pressure: bool = Field(True, description="Model time-varying memory pressure (OOMs).")
    dropout: bool = Field(True, description="Model availability sessions and transfer failures.")


class DataConfig(_Strict):
    """``data``: dataset and how it is split across clients."""

    dataset: Literal["digits", "mnist", "fashion_mnist", "cifar10", "synthetic"] = Field("digits", description='digits (bundled, no files), mnist / fashion_mnist (IDX), cifar10 (python batches), synthetic (Gaussian clusters).')
    dir: str | None = Field(None, description="Dataset directory (relative to the scenario file); required except for digits and synthetic.")
    partition: Literal["iid", "dirichlet", "noniid_tau", "label_clusters", "quantity_skew", "domain_skew"] = Field("dirichlet", description='How the training pool is split across clients (non-IID schemes: dirichlet, noniid_tau, label_clusters, quantity_skew, domain_skew).')
    alpha: float = Field(0.5, gt=0, le=1e6, description="Dirichlet concentration (dirichlet, quantity_skew).")
    tau: float = Field(0.3, ge=0, le=1, description="non-IID(tau): skew of noniid_tau (see tau_definition).")
    tau_definition: Literal["outside_share", "paper_table"] = Field("outside_share", description="noniid_tau: outside_share gives the dominant class 1 - tau of a client's data; paper_table gives it 1 / (1 + tau) (fits the NMoE paper's Table I local accuracies).")
    clusters: int = Field(4, ge=1, le=100_000, description="label_clusters: number of client groups.")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="Share of each client's data held out as its own test split.")
    max_train_samples: int | None = Field(None, ge=10, le=100_000_000, description="Cap on the training pool size (for quick runs).")
    group_shares: list[Annotated[float, Field(gt=0, le=1)]] = Field([0.40, 0.25, 0.15, 0.12, 0.08], min_length=1, max_length=64, description="domain_skew: share of the clients in each group (largest group on the most often online clients).")
    domain_transform: Literal["permute", "rotate"] = Field("permute", description="domain_skew: each group's fixed input transform (a pixel permutation, or a rotation / mirror).")
    synthetic_samples: int = Field(2000, ge=10, le=10_000_000, description="synthetic: samples generated (train + test pool); a city-scale population needs a few per client.")


class ModelConfig(_Strict):
    """``model``: the MoE classifier."""

    backbone: Literal["mlp", "cnn", "resnet18"] = Field("mlp", description='Feature extractor: mlp, a small cnn, or a CIFAR resnet18 (for GPU users).')
    hidden: int = Field(64, ge=1, le=65536, description="Backbone width.")
    feature_dim: int = Field(32, ge=1, le=65536, description="Feature dimension fed to gate and experts.")
    num_experts: int = Field(4, ge=1, le=1024, description='Experts E of the MoE.')
    top_k: int = Field(2, ge=1, le=1024, description="Experts combined per sample; must be <= num_experts.")
    expert_hidden: int = Field(32, ge=0, le=65536, description='Hidden width of each expert MLP head (0: a linear expert head, feature -> classes).')
    feature_layer: bool = Field(True, description="mlp backbone ends in a projection to feature_dim (false: the last hidden layer, width `hidden`, is the feature; feature_dim is then unused).")
    gate_noise_std: float = Field(0.0, ge=0, le=100.0, description='Std of Gaussian noise added to gate logits during training.')
    aux_loss_weight: float = Field(0.01, ge=0, le=100.0, description="Switch-style load-balancing loss weight.")
    stem_layers: int | None = Field(None, ge=0, le=8, description="Hidden layers of the shared stem (mlp: of width hidden; cnn: conv blocks); null: 1 for mlp, 2 for cnn.")
    expert_layers: int = Field(1, ge=1, le=8, description="Hidden layers of expert_hidden units in each expert.")
    stem_projection: bool = Field(True, description="mlp with stem_layers 0: false drops the shared projection, so gate and experts read the flattened input (feature_dim is then ignored).")
    gate_weights: Literal["renormalised", "softmax"] = Field("renormalised", description="Top-k weights: renormalised over the chosen experts, or the unnormalised softmax over all experts (Switch; the gate learns across experts).")
    route_target_weight: float = Field(0.0, ge=0, le=100.0, description="Weight of the routing-target loss: -log of the unmasked gate's probability on the client's assigned experts (the server's alignment, built from fitness, is the gate's target); 0: off.")


class TrainingConfig(_Strict):
    """``training``: local training on clients."""

    optimizer: Literal["sgd", "adam"] = Field("sgd", description='Local optimizer.')
    lr: float = Field(0.05, gt=0, le=10, description='Learning rate.')
    momentum: float = Field(0.9, ge=0, lt=1, description='SGD momentum.')
    weight_decay: float = Field(0.0, ge=0, le=10.0, description='L2 weight decay.')
    local_epochs: int = Field(1, ge=1, le=1000, description='Passes over the local data per round.')
    batch_size: int = Field(32, ge=1, le=1_000_000, description='Samples per local step.')
    fedprox_mu: float = Field(0.0, ge=0, le=1000.0, description="FedProx proximal term weight (0 = FedAvg).")
    executor: Literal["sequential", "batched", "parallel"] = Field("batched", description="How the training jobs of a round run: batched (a cohort at once with torch.func; models with BatchNorm fall back to sequential), sequential (one after another, the reference), parallel (worker processes). All give the same updates within float tolerance and identical simulated events.")
    workers: int = Field(2, ge=1, le=256, description="parallel: worker processes (each keeps its model and clients' data between rounds).")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where training runs: auto (a CUDA GPU when torch sees one, else the CPU), cpu, cuda (fails when there is none).")
    torch_threads: int = Field(1, ge=1, le=256, description="torch intra-op threads used for training (per worker with the parallel executor).")


class FedBuffConfig(_Strict):
    """``protocol.fedmoe.fedbuff``: buffered asynchronous aggregation (``aggregation: async | semi_async``).

    FedBuff (Nguyen et al., AISTATS 2022); staleness functions of FedAsync (Xie et al., 2019).
    """

    concurrency: int | None = Field(None, ge=1, le=100_000, description="Clients training at once (default: ceil(clients_per_round * over_selection)).")
    buffer_size: int | None = Field(None, ge=1, le=100_000, description="async: updates buffered before the server aggregates (default: clients_per_round).")
    server_lr: float = Field(1.0, gt=0, le=10, description="Server learning rate applied to the buffered mean update (1 = FedAvg step).")
    staleness: Literal["constant", "polynomial", "hinge"] = Field(
        "polynomial", description="Staleness weight s(tau): constant 1; polynomial (1+tau)^-a; hinge 1 if tau <= b else 1/(a(tau-b)+1).",
    )
    staleness_exponent: float = Field(0.5, ge=0, le=10, description="a of the polynomial and hinge staleness weights.")
    hinge_threshold: int = Field(4, ge=0, le=10_000, description="b of the hinge staleness weight, versions.")
    period_s: float | None = Field(None, gt=0, le=1e7, description="semi_async: fixed round period, s (default: deadline_s).")


class CapacityConfig(_Strict):
    """``protocol.fedmoe.alignment.capacity``: how the server estimates client capacity."""

    mode: Literal["self_reported", "learned"] = Field("learned", description='self_reported: noisy reports only; learned: EWMA of observed completion times, starting from the report.')
    report_noise_cv: float = Field(0.2, ge=0, le=5, description="Noise of self-reports (lognormal coefficient of variation).")
    safety_margin: float = Field(0.2, ge=0, lt=1, description="Share of the deadline kept in reserve when budgeting experts.")
    ewma: float = Field(0.5, gt=0, le=1, description="Weight of a new observation in learned estimates.")


class AlignmentConfig(_Strict):
    """``protocol.fedmoe.alignment``: client-expert alignment state and policy."""

    policy: str = Field("load_balanced", description="random, greedy, load_balanced, load_balanced_inround, optimal, deadline_aware, systems_aware, fair_participation.")
    w_f: float = Field(1.0, ge=0, le=1e3, description="load_balanced / deadline_aware: weight of normalised fitness.")
    w_u: float = Field(0.5, ge=0, le=1e3, description="load_balanced / deadline_aware: weight of normalised usage (penalty).")
    w_r: float = Field(0.0, ge=0, le=100, description="load_balanced / deadline_aware: weight of the in-round load (0 = the paper's rule; load_balanced_inround uses 0.5).")
    w_t: float = Field(1.0, ge=0, le=100, description="systems_aware / fair_participation: weight of an expert's predicted extra round time (per deadline).")
    w_p: float = Field(1.0, ge=0, le=100, description="fair_participation: weight of a client's participation deficit (p_mean - p_c) / max(p_mean, 1), in rounds contributed per mean rounds, against its predicted one-expert round time per deadline when choosing who trains (0 = systems_aware).")
    min_load: int = Field(0, ge=0, le=10_000_000, description="optimal: fewest clients per expert each round.")
    max_load: int | None = Field(None, ge=1, le=10_000_000, description="optimal: most clients per expert each round (null: unbounded).")
    on_infeasible: Literal["raise", "relax"] = Field("relax", description="optimal: when load bounds cannot be met, fail or drop them.")
    min_k: int = Field(0, ge=0, le=1024, description="deadline_aware: experts given regardless of predicted time.")
    epsilon: float = Field(0.0, ge=0, le=1, description="greedy: probability (per client and round) of taking random experts instead of the top ones by fitness (epsilon-greedy exploration; 0 = pure greedy).")
    reward: Literal["gate_prob", "loss", "expert_loss"] = Field("gate_prob", description="Fitness reward: the gate's mean routing probability (all experts), loss reduction (trained experts), or exp(-loss) of each trained expert alone on the client's data before training (expert-specific).")
    fitness_ema: float = Field(0.3, gt=0, le=1, description='Weight of a new reward in the fitness EMA.')
    fitness_decay: float = Field(0.95, gt=0, le=1, description='Per-round decay of fitness for pairs without feedback.')
    usage_decay: float = Field(0.9, ge=0, le=1, description='Per-round decay of expert usage (U <- decay x U + load).')
    max_experts_per_client: int | None = Field(None, ge=1, le=1024, description="Cap on k_c regardless of capacity.")
    capacity: CapacityConfig = Field(default_factory=CapacityConfig)


class FedMoEConfig(_Strict):
    """``protocol.fedmoe``: the server-side federated MoE round loop."""

    clients_per_round: int = Field(10, ge=1, le=10_000_000, description="Clients the server wants per round.")
    over_selection: float = Field(1.3, ge=1.0, le=10.0, description="Select this factor more clients to absorb stragglers.")
    deadline_s: float = Field(60.0, gt=0, le=1e6, description="Round deadline, s after dispatch.")
    min_completions: int | None = Field(None, ge=1, le=10_000_000, description="End the round at the first K completions (default: clients_per_round).")
    train_shared: bool = Field(True, description="Clients also train the backbone and gate.")
    server_compute_s: float = Field(0.0, ge=0, le=1e6, description="Server aggregation time per round, s.")
    round_interval_s: float = Field(0.0, ge=0, le=86400, description="Idle time between the end of a round and the next selection, s (devices keep moving and going on/offline meanwhile).")
    aggregation: AggregationMode = Field(
        "sync", description="sync: rounds cut at the deadline; async: FedBuff; semi_async: rounds close every deadline_s, late updates folded in later (see fedbuff).",
    )
    expert_widths: list[Annotated[float, Field(gt=0, le=1)]] | None = Field(
        None, min_length=1, max_length=16,
        description="Capacity-sized sub-networks (HeteroFL, Diao et al. 2021): expert width ratios in (0, 1]; each selected client trains experts of the widest ratio whose training memory (1 expert) fits the server's memory estimate, ceil(ratio x expert_hidden) hidden units, and is charged that sub-network's bytes, FLOPs and memory; each parameter element is averaged over the clients whose sub-network holds it. Needs expert_hidden > 0 and aggregation sync. null: off (every expert full width).",
    )
    fedbuff: FedBuffConfig = Field(default_factory=FedBuffConfig)
    alignment: AlignmentConfig = Field(default_factory=AlignmentConfig)


class NMoEConfig(_Strict):
    """``protocol.nmoe``: Networked MoE (three-stage training, serverless inference)."""

    extractor: Literal["fedce", "fedsc"] = Field("fedce", description='Stage 1: fedce (FedAvg with cross-entropy) or fedsc (federated spectral contrastive).')
    gate: Literal["rangate", "rollgate", "fedgate"] = Field("fedgate", description='Stage 3: rangate (random routing), rollgate (pseudo client-id classifier), fedgate (FedAvg inside the MoE).')
    rollgate_p: float = Field(0.7, gt=0, lt=1, description="rollgate: share of a client's data labelled with its own id.")
    fedgate_fraction: float = Field(0.7, gt=0, le=1, description='fedgate: share of clients sampled per epoch.')
    dp_epsilon: float | None = Field(8.0, gt=0, le=1000, description='fedsc: differential-privacy epsilon of each release of a shared correlation matrix (Gaussian mechanism; the epsilon spent over all rounds is reported); null: no noise.')
    dp_delta: float = Field(1e-5, gt=0, lt=1, description='fedsc: differential-privacy delta.')
    fedgate_loss: Literal["topk_noisy", "dense"] = Field("topk_noisy", description='fedgate local loss: topk_noisy (noisy top-k gate + load-balancing loss) or dense (dense mixture likelihood).')
    fedgate_noise_std: float = Field(1.0, ge=0, le=10, description='fedgate topk_noisy: std of the Gaussian noise on the gate logits during training (logit units).')
    fedgate_load_weight: float = Field(0.01, ge=0, le=10, description='fedgate topk_noisy: weight of the Switch load-balancing loss.')
    server: str | None = Field(None, description="Node id of the stage-1 / fedgate aggregator: a base station, the cloud or a volunteer client (null: topology.server).")
    deadline_s: float = Field(600.0, gt=0, le=86_400, description="Training exchange deadline, s after dispatch (clients still running are stragglers).")
    min_completions: int | None = Field(None, ge=1, le=100_000, description="Close a training exchange at the first K completions (null: wait for every selected client).")
    stage_deadline_s: float | None = Field(None, gt=0, le=1e7, description="Stage semantics, s: a stage round (a stage-1 round, stage 2, FedGate's scoring or one of its rounds, a RollGate hop) retries the clients whose part did not complete (offline, dropped, straggled, out of memory) every stage_retry_s until every client has done its part or this many simulated seconds after the round began (the paper's semantics with a generous value); null: one attempt, clients offline at its start miss it (the availability ablation). No retries with min_completions.")
    stage_retry_s: float = Field(30.0, gt=0, le=86_400, description="With stage_deadline_s: simulated seconds between a stage round's attempts (an offline client is retried at the first attempt after it is back).")
    request_rate_per_s: float = Field(0.5, gt=0, le=1e4, description="Poisson inference request rate per client, 1/s.")
    inference_horizon_s: float = Field(120.0, gt=0, le=1e6, description="Simulated seconds of inference traffic.")
    request_timeout_s: float = Field(60.0, gt=0, le=86_400, description="An inference request unanswered this long after issue fails (reason timeout).")
    channel_gate_weight: float = Field(0.0, ge=0, le=1000, description="Channel-aware gating for inference (dimensionless): each request takes the top_k experts by log(routing probability) - weight * predicted latency / request_timeout_s, the latency as the requesting client predicts it (current fading block's outage, its last measured network and compute seconds to the expert, its unanswered requests there; fedsim.protocols.nmoe_gate); 0: today's gate (routing probability only).")


class ProtocolConfig(_Strict):
    """``protocol``: which protocol runs and its settings."""

    name: Literal["fedmoe", "nmoe"] = Field("fedmoe", description='fedmoe: server-side federated MoE with alignment; nmoe: networked MoE with serverless inference.')
    fedmoe: FedMoEConfig = Field(default_factory=FedMoEConfig)
    nmoe: NMoEConfig = Field(default_factory=NMoEConfig)


class EvaluationConfig(_Strict):
    """``evaluation``: when and how the global model is evaluated."""

    every_rounds: int = Field(1, ge=1, le=100_000, description='Evaluate the global model every this many rounds (and at the last).')
    target_accuracy: float = Field(0.8, gt=0, le=1, description="Accuracy for time-to-target metrics.")
    max_test_samples: int | None = Field(None, ge=10, le=100_000_000, description='Cap on the global test set size (null: all).')


class OutputConfig(_Strict):
    """``output``: where and what to write."""

    dir: str = Field("runs", description="Parent directory of run directories (relative to the working directory).")
    figures: bool = Field(True, description="Write figures at the end of the run.")
    link_sample_s: float = Field(5.0, ge=1e-3, le=1e6, description="Link utilisation sampling interval, s.")
    checkpoint_every_rounds: int | None = Field(
        None, ge=0, le=1_000_000,
        description="Write a checkpoint (checkpoint.json + checkpoint.log, for `fedsim run --resume`) every this many rounds; "
        "0 = never; default (null) = max(1, run.rounds // 10), i.e. about 10 checkpoints per run.",
    )
    tensorboard: bool = Field(False, description="Also write per-round accuracy, simulated time, bytes and stragglers as TensorBoard event files into RUN_DIR/tensorboard while the run goes on (tensorboard --logdir RUN_DIR or SWEEP_DIR).")


class Scenario(_Strict):
    """A whole scenario. ``extends`` is resolved by the loader before validation."""

    run: RunConfig = Field(default_factory=RunConfig)
    topology: TopologyConfig = Field(default_factory=TopologyConfig)
    channel: ChannelConfig = Field(default_factory=ChannelConfig)
    devices: DevicesConfig = Field(default_factory=DevicesConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    protocol: ProtocolConfig = Field(default_factory=ProtocolConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)


def defaults_of(section: type[BaseModel]) -> dict[str, Any]:
    """``{key: default}`` of a schema section: the one home of the defaults that the layers'
    parameter classes share (``ChannelParams``, ``MoEConfig``, ``TrainConfig`` take theirs from here)."""
    return {name: f.get_default(call_default_factory=True) for name, f in section.model_fields.items()}
