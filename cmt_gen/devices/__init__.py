"""The kinds of device a profile can run on, one module each, and how a user's `--device` resolves to one.

Everything that differs between devices (timing, peak memory, free memory,
budgets, matmul-peak sizes, attention kernel, low-precision rules, the
environment record) is a method of a `Device` (`devices.base`). A new kind of
device is one module with a `Device` subclass, registered in `DEVICES` below.
Torch-free to import: the CLI's light commands and `cmt_gen.latency` use it.
"""

from __future__ import annotations

from cmt_gen.devices.base import Device, DeviceDefaults, MatmulSizes, MemoryMeter
from cmt_gen.devices.cpu import CPU
from cmt_gen.devices.cuda import CUDA
from cmt_gen.devices.mps import MPS
from cmt_gen.errors import CmtGenError

# Registration order is the help text's order; `auto` tries the accelerators in it, then the host.
DEVICES: dict[str, Device] = {device.kind: device for device in (CPU, CUDA, MPS)}
KINDS: tuple[str, ...] = tuple(DEVICES)


def _names_help() -> str:
    names = ["auto", *(name for device in DEVICES.values() for name in device.names)]
    return f"{', '.join(names[:-1])} or {names[-1]}"


DEVICE_HELP = _names_help()  # "auto, cpu, cuda, cuda:N or mps"


def device_for(name_or_kind: str) -> Device:
    """The Device of a resolved name ("cuda:1") or kind ("cuda"); a KeyError names an unknown kind."""
    kind = str(name_or_kind).partition(":")[0]
    try:
        return DEVICES[kind]
    except KeyError:
        raise KeyError(f"no device kind {kind!r}; known: {', '.join(KINDS)}") from None


def find(kind: str) -> Device | None:
    """The Device of a kind, or None for one this package does not know (e.g. torch's "meta")."""
    return DEVICES.get(str(kind).partition(":")[0])


def resolve(device: str) -> str:
    """The user's `--device` as a canonical name: 'auto' -> the first accelerator present ('cuda:0'),
    else 'cpu'; any other name is checked to exist here. Mistakes are CmtGenErrors (field "device")."""
    text = str(device).strip().lower()
    if text == "auto":
        for candidate in sorted(DEVICES.values(), key=lambda d: d.host):  # accelerators first
            name = candidate.auto() if candidate.picked_by_auto else None
            if name is not None:
                return name
        raise CmtGenError("no device available for auto", field="device")
    for candidate in DEVICES.values():
        name = candidate.resolve(text, str(device))
        if name is not None:
            return name
    raise CmtGenError(f"unknown device {device!r}; use {DEVICE_HELP}", field="device")


def auto_help() -> str:
    """What `--device auto` picks, for help text: "auto (CUDA when present, else CPU)"."""
    picked = [d.label for d in DEVICES.values() if not d.host and d.picked_by_auto]
    host = next((d.label for d in DEVICES.values() if d.host), "CPU")
    return f"auto ({' or '.join(picked)} when present, else {host})" if picked else f"auto ({host})"


__all__ = ["DEVICES", "DEVICE_HELP", "KINDS", "Device", "DeviceDefaults", "MatmulSizes", "MemoryMeter",
           "auto_help", "device_for", "find", "resolve"]
