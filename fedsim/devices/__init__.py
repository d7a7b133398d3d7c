"""Devices: compute speed, memory pressure, availability / dropout, traces."""

from fedsim.devices.causes import Deadline, Dropout, OutOfMemory, interrupt_status
from fedsim.devices.device import ComputeResult, Device
from fedsim.devices.params import DEVICE_CLASSES, DeviceClassParams, default_device_classes
from fedsim.devices.traces import (
    AvailabilityTrace,
    DeviceCapacity,
    availability_from_fedscale,
    capacity_from_fedscale,
    load_fedscale_availability,
    load_fedscale_capacity,
)

__all__ = [
    "AvailabilityTrace",
    "ComputeResult",
    "DEVICE_CLASSES",
    "Device",
    "DeviceCapacity",
    "DeviceClassParams",
    "Deadline",
    "Dropout",
    "OutOfMemory",
    "availability_from_fedscale",
    "capacity_from_fedscale",
    "default_device_classes",
    "load_fedscale_availability",
    "load_fedscale_capacity",
    "interrupt_status",
]
