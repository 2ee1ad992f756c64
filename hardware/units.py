"""Readable quantities ("900 GB/s", "80 GiB", "989 TFLOPS", "5 us") parsed once, at the edge, and checked
against what real hardware can be.

Inside splitsim every figure is a float in SI base units: bytes, seconds, bytes/s, FLOP/s.
Decimal prefixes (k, M, G, T, P) are powers of 1000, binary ones (Ki, Mi, Gi, Ti) powers of 1024;
`b` (bits) is an eighth of `B` (bytes), so "400 Gb/s" is 50e9 bytes/s.

Each hardware field has a kind (`PLAUSIBLE`): a figure of that kind must be finite, positive (a fixed
cost may be 0) and inside the kind's plausible range, whose bounds cite the slowest and fastest real
device or link they admit (docs/inputs.md holds the same table). A bare number outside the range most
likely lost its unit, so its message suggests the readable forms that would fit: `nic_bw_bytes_per_s: 200`
→ "did you mean '200 Gb/s' or '200 GB/s'?".
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BeforeValidator

from splitsim.files import cut

_PREFIX = {
    "": 1.0, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15,
    "Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40,
}
_TIME = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_QUANTITY = re.compile(r"^\s*([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([A-Za-zµ/]*)\s*$")
_UNIT = re.compile(r"^(Ki|Mi|Gi|Ti|[kKMGTP]?)(B|b|FLOPS|B/s|b/s|bps)$")

Quantity = Literal["bytes", "bytes_per_s", "flops_per_s", "seconds"]


def parse_quantity(value: object, kind: str) -> float:
    """Turn `value` (a number or a string with a unit) into a finite float in SI base units.

    `kind` is one of "bytes", "bytes_per_s", "flops_per_s", "seconds": the unit must match it.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a {kind} quantity, got {value!r}")
    if isinstance(value, (int, float)):
        return _finite(value)
    if not isinstance(value, str):
        raise ValueError(f"expected a number or a string such as '900 GB/s', got {type(value).__name__}")
    match = _QUANTITY.match(value)
    if not match:
        raise ValueError(f"cannot read {cut(value, 40)!r} as a {kind} quantity")
    number, unit = _finite(float(match.group(1))), match.group(2)
    if unit == "":
        return number
    if kind == "seconds":
        if unit not in _TIME:
            raise ValueError(f"unknown time unit in {cut(value, 40)!r} (valid: {', '.join(_TIME)})")
        return _finite(number * _TIME[unit])
    unit_match = _UNIT.match(unit)
    if not unit_match:
        raise ValueError(f"unknown unit in {cut(value, 40)!r}")
    prefix, base = unit_match.groups()
    expected = {"bytes": ("B", "b"), "bytes_per_s": ("B/s", "b/s", "bps"), "flops_per_s": ("FLOPS",)}[kind]
    if base not in expected:
        raise ValueError(f"{cut(value, 40)!r} is not a {kind} quantity (expected a unit like {expected[0]})")
    scale = _PREFIX[prefix] / (8.0 if base in ("b", "b/s", "bps") else 1.0)
    return _finite(number * scale)


def _finite(number: int | float) -> float:
    try:
        value = float(number)
    except OverflowError:  # an integer beyond a float's range
        raise ValueError(f"an integer of {len(str(abs(int(number))))} digits is beyond any figure") from None
    if not math.isfinite(value):
        raise ValueError(f"{value} is not a finite number")
    return value


# ------------------------------------------------------------------------------- plausible figures

FigureKind = Literal["memory", "buffer", "memory_bandwidth", "link_bandwidth", "flops", "latency", "fixed_cost"]


@dataclass(frozen=True)
class Plausible:
    """The range a figure of one kind can take on real hardware, and the devices that set its bounds."""

    quantity: Quantity
    what: str  # as messages name it
    low: float  # SI; 0 for a fixed cost, the one kind that may be 0
    high: float
    low_cite: str  # the slowest/smallest real device or link the range admits, in short
    high_cite: str  # the fastest/largest one
    example: str  # a readable value, for messages
    units: tuple[str, ...]  # readable units suggested for a bare number outside the range


PLAUSIBLE: dict[FigureKind, Plausible] = {
    "memory": Plausible("bytes", "memory", 1e6, 16e12,
                        "Google Coral Edge TPU: 8 MB SRAM",
                        "a 2-socket Xeon host (cpu-core): 8 TB RAM; Rubin Ultra, announced: 1 TB HBM4e",
                        "80 GB", ("GB", "GiB")),
    "buffer": Plausible("bytes", "buffer size", 1e3, 16e12,
                        "a 4 KiB memory page", "the largest plausible memory",
                        "8 MiB", ("KiB", "MiB")),
    "memory_bandwidth": Plausible("bytes_per_s", "memory bandwidth", 10e9, 100e12,
                                  "Raspberry Pi 5, LPDDR4X: 17 GB/s",
                                  "AMD Instinct MI400, announced: 19.6 TB/s HBM4",
                                  "3350 GB/s", ("GB/s", "TB/s")),
    "link_bandwidth": Plausible("bytes_per_s", "link bandwidth", 100e6, 4e12,
                                "Gigabit Ethernet: 125 MB/s",
                                "NVLink 6: 1.8 TB/s per direction",
                                "400 Gb/s", ("Gb/s", "GB/s")),
    "flops": Plausible("flops_per_s", "compute peak", 10e9, 50e15,
                       "one Cortex-A76 core of a Raspberry Pi 5: 38 GFLOPS",
                       "AMD Instinct MI400, announced: 20 PFLOPS FP8",
                       "989 TFLOPS", ("TFLOPS", "PFLOPS")),
    "latency": Plausible("seconds", "latency", 50e-9, 100e-3,
                         "an NVLink 4 ring step, fitted on 8×H100: 0.22 us",
                         "gloo over loopback on an oversubscribed CPU: up to 5 ms a call",
                         "5 us", ("us", "ms")),
    "fixed_cost": Plausible("seconds", "fixed cost", 0.0, 100e-3,
                            "0: a fit may leave the whole time to the other terms",
                            "gloo over loopback on an oversubscribed CPU: up to 5 ms a call",
                            "5 us", ("us", "ms")),
}
"""The plausible range of each kind of hardware figure; docs/inputs.md gives the sources of each bound."""

_BASE = {"bytes": "bytes", "bytes_per_s": "B/s", "flops_per_s": "FLOP/s", "seconds": "s"}
_SCALES: dict[Quantity, tuple[tuple[float, str], ...]] = {
    "bytes": ((1e12, "TB"), (1e9, "GB"), (1e6, "MB"), (1e3, "kB")),
    "bytes_per_s": ((1e12, "TB/s"), (1e9, "GB/s"), (1e6, "MB/s"), (1e3, "kB/s")),
    "flops_per_s": ((1e15, "PFLOPS"), (1e12, "TFLOPS"), (1e9, "GFLOPS")),
    "seconds": ((1.0, "s"), (1e-3, "ms"), (1e-6, "us"), (1e-9, "ns")),
}
_SIZE_WORDS = {"bytes": ("smallest", "largest"), "bytes_per_s": ("slowest", "fastest"),
               "flops_per_s": ("slowest", "fastest"), "seconds": ("shortest", "longest")}


def readable(value: float, quantity: Quantity) -> str:
    """`value` (SI) in the largest unit that keeps it at least 1: 2.5e10 B/s → "25 GB/s"."""
    for scale, unit in _SCALES[quantity]:
        if abs(value) >= scale:
            return f"{value / scale:.4g} {unit}"
    return f"{value:.4g} {_BASE[quantity]}"


def _bare(value: object) -> bool:
    """A number with no unit: a YAML number, or a string of digits alone."""
    if isinstance(value, str):
        match = _QUANTITY.match(value)
        return match is not None and match.group(2) == ""
    return isinstance(value, (int, float))


def check_figure(value: object, kind: FigureKind) -> float:
    """`value` parsed as a figure of `kind`, or a ValueError saying what would be valid."""
    spec = PLAUSIBLE[kind]
    valid = (f"valid: {readable(spec.low, spec.quantity) if spec.low else '0'} to "
             f"{readable(spec.high, spec.quantity)}, e.g. '{spec.example}'")
    try:
        number = parse_quantity(value, spec.quantity)
    except ValueError as err:
        raise ValueError(f"{err} ({valid})") from None
    if number < 0 or (number == 0 and spec.low > 0):
        need = "0 or more" if spec.low == 0 else "positive"
        raise ValueError(f"{spec.what} must be {need} ({valid})")
    if spec.low <= number <= spec.high:
        return number
    shown = f"{number:.12g} {_BASE[spec.quantity]}" if _bare(value) else readable(number, spec.quantity)
    small, large = _SIZE_WORDS[spec.quantity]
    if number < spec.low:
        where = f"below the {small} plausible {spec.what}, {readable(spec.low, spec.quantity)} ({spec.low_cite})"
    else:
        where = f"above the {large} plausible {spec.what}, {readable(spec.high, spec.quantity)} ({spec.high_cite})"
    message = f"{shown} is {where}"
    if _bare(value):
        fits = [f"'{number:.12g} {unit}'" for unit in spec.units
                if spec.low <= parse_quantity(f"{number:.12g} {unit}", spec.quantity) <= spec.high]
        message += f"; did you mean {' or '.join(fits)}?" if fits else f" ({valid})"
    raise ValueError(message)


def _figure(kind: FigureKind) -> BeforeValidator:
    return BeforeValidator(lambda value: check_figure(value, kind))


Memory = Annotated[float, _figure("memory")]
BufferSize = Annotated[float, _figure("buffer")]
MemoryBandwidth = Annotated[float, _figure("memory_bandwidth")]
LinkBandwidth = Annotated[float, _figure("link_bandwidth")]
Flops = Annotated[float, _figure("flops")]
Latency = Annotated[float, _figure("latency")]
FixedCost = Annotated[float, _figure("fixed_cost")]


MIN_FRACTION = 1e-4  # the slowest fit we know: eager CPU norms at ~0.09 of memory bandwidth (docs/validate-cpu.md)


def check_fraction(value: object, what: str, *, zero_ok: bool = False) -> float:
    """`value` as a fraction: 0 < x ≤ 1 (0 ≤ x ≤ 1 with `zero_ok`), or a ValueError saying so."""
    valid = f"{what} is {'from 0 to 1' if zero_ok else 'more than 0 and at most 1'}, e.g. 0.75"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"expected a number: {valid}")
    try:
        number = _finite(value)
    except ValueError as err:
        raise ValueError(f"{err}: {valid}") from None
    if not (0 <= number <= 1) or (number == 0 and not zero_ok):
        raise ValueError(valid)
    if 0 < number < MIN_FRACTION and not zero_ok:
        raise ValueError(f"{number:g} is below {MIN_FRACTION:g}: no measured kernel runs at less than 0.01 % of "
                         f"its peak (a percentage written as a fraction twice?); {valid}")
    return number


def _fraction(what: str, zero_ok: bool = False) -> BeforeValidator:
    return BeforeValidator(lambda value: check_fraction(value, what, zero_ok=zero_ok))


Fraction = Annotated[float, _fraction("an efficiency (the achieved fraction of a peak)")]
Exponent = Annotated[float, _fraction("the wave exponent γ", zero_ok=True)]


MAX_ERROR = 100.0  # a median relative error beyond it is a fit that failed, not a figure to carry


def check_errors(errors: object) -> object:
    """Median relative errors by op kind: each a number from 0 to `MAX_ERROR`."""
    if not isinstance(errors, dict):
        return errors  # pydantic says it is not a mapping
    for kind, value in errors.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= MAX_ERROR:
            raise ValueError(f"{kind}: {cut(repr(value))} is not a median relative error (valid: 0 to "
                             f"{MAX_ERROR:g}, e.g. 0.05)")
    return {kind: float(value) for kind, value in errors.items()}
