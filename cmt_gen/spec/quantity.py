"""Quantities such as `25.1M` or `4.0G`: how papers write parameter and MAC counts."""

from __future__ import annotations

import math
import re

_SUFFIX = {"": 1.0, "K": 1e3, "M": 1e6, "G": 1e9, "B": 1e9, "T": 1e12}
_PATTERN = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]?)\s*$")


def parse_quantity(value: object) -> float:
    """Return the number a quantity stands for; raise ValueError naming the rule."""
    if isinstance(value, bool):
        raise ValueError("expected a number or a quantity such as 25.1M or 4.0G, got a boolean")
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        match = _PATTERN.match(value)
        suffix = match.group(2).upper() if match else ""
        if not match or suffix not in _SUFFIX:
            raise ValueError(
                f"{value!r} is not a quantity: write a number with an optional suffix "
                "K, M, G (or B for billion) or T, such as 25.1M or 4.0G"
            )
        number = float(match.group(1)) * _SUFFIX[suffix]
    else:
        raise ValueError(f"expected a number or a quantity such as 25.1M, got {type(value).__name__}")
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{value!r} must be a finite, non-negative quantity")
    return number


def format_quantity(value: float, digits: int = 2) -> str:
    """Short human form: 26256160 -> '26.26M'."""
    for suffix, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.{digits}f}{suffix}"
    return f"{value:.0f}"


def printed_interval(text: str) -> tuple[float, float]:
    """Values that a figure printed with this many digits stands for: '0.6G' -> (0.55e9, 0.65e9)."""
    value = parse_quantity(text)
    match = _PATTERN.match(str(text))
    mantissa = match.group(1) if match else str(text)
    scale = _SUFFIX[match.group(2).upper()] if match else 1.0
    decimals = len(mantissa.split(".")[1]) if "." in mantissa and "e" not in mantissa.lower() else 0
    half = 0.5 * 10.0 ** (-decimals) * scale
    return value - half, value + half


# One unit per kind of figure, everywhere cmt-gen prints one: parameters in millions (M), MACs in
# billions (G, what Table 2 prints as "B" under "# FLOPs"), memory in binary MiB / GiB. A fixed unit
# per column lets figures be compared at a glance (0.60G beside 19.50G, never 600.00M beside 19.50G).
UNITS = {"params": ("M", 1e6), "macs": ("G", 1e9)}


def format_in_unit(value: float, quantity: str, digits: int = 2) -> str:
    """A parameter count in M or a MAC count in G: 26256160 params -> '26.26M'."""
    suffix, scale = UNITS[quantity]
    return f"{value / scale:.{digits}f}{suffix}"


def format_params(value: float, digits: int = 2) -> str:
    return format_in_unit(value, "params", digits)


def format_macs(value: float, digits: int = 2) -> str:
    return format_in_unit(value, "macs", digits)


def format_bytes(value: float) -> str:
    """Memory in binary units: MiB below one GiB, GiB from there."""
    if value >= 1024**3:
        return f"{value / 1024**3:.2f} GiB"
    return f"{value / 1024**2:.1f} MiB"


def quantity_text(value: float, quantity: str) -> str:
    """The shortest text in the quantity's unit that reads back as this value: 74.7e6 -> '74.7M'."""
    suffix, scale = UNITS[quantity]
    number = repr(value / scale)
    return (number[:-2] if number.endswith(".0") else number) + suffix
