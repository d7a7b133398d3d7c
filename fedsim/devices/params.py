"""Device-class parameters (units in the field names) and realistic defaults."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["DeviceClassParams", "default_device_classes", "DEVICE_CLASSES", "SPEED_DECAY_RULE"]

#: The five client device classes of the smart-city scenario.
DEVICE_CLASSES = ("vehicle", "drone", "camera", "sensor", "phone")
_MOBILITY = ("static", "street", "fly", "walk", "highway")


@dataclass(frozen=True)
class DeviceClassParams:
    """Ground-truth behaviour of one device class.

    Attributes:
        flops_mean: mean effective training speed over devices of the class
            (FLOP/s); each device draws its own speed from a lognormal with
            this mean and coefficient of variation ``flops_cv``.
        flops_cv: coefficient of variation of the per-device speed.
        background_load_mean: mean fraction of compute taken by background
            work (0 = none); the load is redrawn uniformly in
            [0, 2 * mean] (clipped to [0, 0.95]) every exponential interval.
        background_load_change_mean_s: mean time between background-load changes (s).
        memory_gb: device memory (GB, 1e9 bytes).
        memory_pressure_levels: fraction of memory used by other apps in each
            pressure state (idle, normal, heavy).
        memory_pressure_mean_hold_s: mean sojourn (s) in each state.
        memory_pressure_jump: row-stochastic jump matrix between states
            (diagonal ignored).
        oom_mode: what a rise in pressure does to a running job that no
            longer fits: ``"kill"`` (the job ends with an OutOfMemory cause)
            or ``"swap"`` (the job slows by ``swap_slowdown``).
        swap_slowdown: speed divisor while a job is swapping (>= 1).
        mean_on_s: mean online session length (s); ``inf`` = always online.
        mean_off_s: mean offline period (s).
        transfer_hazard_per_s: failure rate while a transfer of this device
            is in progress (1/s); a failure ends the transfer with a Dropout.
        mobility: ``"static"``, ``"street"`` (vehicles on the street grid),
            ``"fly"`` (drones, 3D random waypoint) or ``"walk"`` (pedestrians
            on sidewalks).
        speed_min_mps: minimum travel speed (m/s); > 0 for a moving class
            (:data:`SPEED_DECAY_RULE`).
        speed_max_mps: maximum travel speed (m/s).
        altitude_min_m: lowest flying altitude (drones), or antenna height.
        altitude_max_m: highest flying altitude (drones), or antenna height.
        tx_power_dbm: uplink transmit power (dBm).
    """

    flops_mean: float = 2e10
    flops_cv: float = 0.3
    background_load_mean: float = 0.2
    background_load_change_mean_s: float = 120.0
    memory_gb: float = 6.0
    memory_pressure_levels: tuple[float, ...] = (0.2, 0.45, 0.75)
    memory_pressure_mean_hold_s: tuple[float, ...] = (600.0, 1200.0, 300.0)
    memory_pressure_jump: tuple[tuple[float, ...], ...] = field(
        default=((0.0, 1.0, 0.0), (0.5, 0.0, 0.5), (0.0, 1.0, 0.0))
    )
    oom_mode: str = "kill"
    swap_slowdown: float = 4.0
    mean_on_s: float = 3600.0
    mean_off_s: float = 600.0
    transfer_hazard_per_s: float = 0.0
    mobility: str = "static"
    speed_min_mps: float = 0.0
    speed_max_mps: float = 0.0
    altitude_min_m: float = 1.5
    altitude_max_m: float = 1.5
    tx_power_dbm: float = 23.0

    def __post_init__(self) -> None:
        if not self.flops_mean > 0:
            raise ValueError('"flops_mean" must be > 0')
        if self.flops_cv < 0:
            raise ValueError('"flops_cv" must be >= 0')
        if self.oom_mode not in ("kill", "swap"):
            raise ValueError('"oom_mode" must be "kill" or "swap"')
        if self.mobility not in _MOBILITY:
            raise ValueError(f'"mobility" must be one of {_MOBILITY}')
        if self.swap_slowdown < 1:
            raise ValueError('"swap_slowdown" must be >= 1')
        n = len(self.memory_pressure_levels)
        if len(self.memory_pressure_mean_hold_s) != n or len(self.memory_pressure_jump) != n:
            raise ValueError('"memory_pressure_*" must all have one entry per level')
        if any(not 0 <= lv < 1 for lv in self.memory_pressure_levels):
            raise ValueError('"memory_pressure_levels" must be in [0, 1)')
        if not self.mean_on_s > 0 or not self.mean_off_s > 0:
            raise ValueError('"mean_on_s" and "mean_off_s" must be > 0')
        if self.speed_max_mps < self.speed_min_mps:
            raise ValueError('"speed_max_mps" must be >= "speed_min_mps"')
        if self.mobility != "static" and self.speed_max_mps > 0 and not self.speed_min_mps > 0:
            raise ValueError(f"speed_min_mps: {SPEED_DECAY_RULE} (mobility {self.mobility!r}, speed_max_mps {self.speed_max_mps:g})")
        if self.altitude_max_m < self.altitude_min_m:
            raise ValueError('"altitude_max_m" must be >= "altitude_min_m"')


#: Why a moving class needs ``speed_min_mps > 0``: each leg's speed is drawn uniformly in
#: [min, max] and a slow leg lasts long, so the time-average speed is
#: ``1 / E[1 / v]``, which is 0 for ``min = 0``: the population slows down
#: over the run (the random-waypoint speed decay, Yoon, Liu and Noble, "Random
#: waypoint considered harmful", IEEE INFOCOM 2003; it holds for the street walk's
#: equal-length legs too). Their remedy is a positive minimum speed.
SPEED_DECAY_RULE = ("must be > 0 for a moving class: with leg speeds drawn down to 0 the mean speed decays towards 0 "
                    "over the run (random-waypoint speed decay, Yoon et al. 2003); e.g. 0.1 x speed_max_mps")


def default_device_classes() -> dict[str, DeviceClassParams]:
    """Realistic defaults of the five classes (effective *training* FLOP/s).

    - vehicle: automotive SoC, 1e11 FLOP/s, 16 GB, on for long trips,
      8-17 m/s on streets.
    - drone: embedded GPU (Jetson-class), 5e10 FLOP/s, 8 GB, battery-limited
      sessions, flies 5-15 m/s at 30-120 m.
    - camera: smart camera NPU, 1e10 FLOP/s, 2 GB, static on a pole at 6 m.
    - sensor: microcontroller-class, 5e8 FLOP/s, 0.5 GB, static at 3 m,
      duty-cycled.
    - phone: 2e10 FLOP/s, 6 GB, busy background, walks 0.8-1.8 m/s.
    """
    return {
        "vehicle": DeviceClassParams(
            flops_mean=1e11, flops_cv=0.25, background_load_mean=0.1, memory_gb=16.0,
            memory_pressure_levels=(0.15, 0.3, 0.6), mean_on_s=5400.0, mean_off_s=1800.0,
            transfer_hazard_per_s=1e-4, mobility="street", speed_min_mps=8.0,
            speed_max_mps=17.0, altitude_min_m=1.5, altitude_max_m=1.5, tx_power_dbm=26.0,
        ),
        "drone": DeviceClassParams(
            flops_mean=5e10, flops_cv=0.3, background_load_mean=0.15, memory_gb=8.0,
            memory_pressure_levels=(0.2, 0.4, 0.7), mean_on_s=1500.0, mean_off_s=900.0,
            transfer_hazard_per_s=2e-4, mobility="fly", speed_min_mps=5.0,
            speed_max_mps=15.0, altitude_min_m=30.0, altitude_max_m=120.0, tx_power_dbm=23.0,
        ),
        "camera": DeviceClassParams(
            flops_mean=1e10, flops_cv=0.2, background_load_mean=0.3, memory_gb=2.0,
            memory_pressure_levels=(0.3, 0.5, 0.8), mean_on_s=36000.0, mean_off_s=300.0,
            transfer_hazard_per_s=2e-5, mobility="static", altitude_min_m=6.0,
            altitude_max_m=6.0, tx_power_dbm=23.0,
        ),
        "sensor": DeviceClassParams(
            flops_mean=5e8, flops_cv=0.4, background_load_mean=0.1, memory_gb=0.5,
            memory_pressure_levels=(0.2, 0.4, 0.6), mean_on_s=1800.0, mean_off_s=1800.0,
            transfer_hazard_per_s=5e-5, mobility="static", altitude_min_m=3.0,
            altitude_max_m=3.0, tx_power_dbm=20.0,
        ),
        "phone": DeviceClassParams(
            flops_mean=2e10, flops_cv=0.5, background_load_mean=0.35, memory_gb=6.0,
            memory_pressure_levels=(0.3, 0.55, 0.8), mean_on_s=1200.0, mean_off_s=2400.0,
            transfer_hazard_per_s=1e-4, mobility="walk", speed_min_mps=0.8,
            speed_max_mps=1.8, altitude_min_m=1.5, altitude_max_m=1.5, tx_power_dbm=23.0,
        ),
    }
