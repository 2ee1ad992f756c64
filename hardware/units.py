"""Readable quantities ("900 GB/s", "80 GiB", "989 TFLOPS", "5 us") parsed once, at the edge.

Inside splitsim every figure is a float in SI base units: bytes, seconds, bytes/s, FLOP/s.
Decimal prefixes (k, M, G, T, P) are powers of 1000, binary ones (Ki, Mi, Gi, Ti) powers of 1024;
`b` (bits) is an eighth of `B` (bytes), so "400 Gb/s" is 50e9 bytes/s.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BeforeValidator

_PREFIX = {
    "": 1.0, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15,
    "Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40,
}
_TIME = {"s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_QUANTITY = re.compile(r"^\s*([-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([A-Za-zµ/]*)\s*$")
_UNIT = re.compile(r"^(Ki|Mi|Gi|Ti|[kKMGTP]?)(B|b|FLOPS|B/s|b/s|bps)$")


def parse_quantity(value: object, kind: str) -> float:
    """Turn `value` (a number or a string with a unit) into a float in SI base units.

    `kind` is one of "bytes", "bytes_per_s", "flops_per_s", "seconds": the unit must match it.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a {kind} quantity, got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"expected a number or a string such as '900 GB/s', got {value!r}")
    match = _QUANTITY.match(value)
    if not match:
        raise ValueError(f"cannot read {value!r} as a {kind} quantity")
    number, unit = float(match.group(1)), match.group(2)
    if unit == "":
        return number
    if kind == "seconds":
        if unit not in _TIME:
            raise ValueError(f"unknown time unit in {value!r} (valid: {', '.join(_TIME)})")
        return number * _TIME[unit]
    unit_match = _UNIT.match(unit)
    if not unit_match:
        raise ValueError(f"unknown unit in {value!r}")
    prefix, base = unit_match.groups()
    expected = {"bytes": ("B", "b"), "bytes_per_s": ("B/s", "b/s", "bps"), "flops_per_s": ("FLOPS",)}[kind]
    if base not in expected:
        raise ValueError(f"{value!r} is not a {kind} quantity (expected a unit like {expected[0]})")
    scale = _PREFIX[prefix] / (8.0 if base in ("b", "b/s", "bps") else 1.0)
    return number * scale


def _quantity(kind: str) -> BeforeValidator:
    return BeforeValidator(lambda value: parse_quantity(value, kind))


Bytes = Annotated[float, _quantity("bytes")]
BytesPerSecond = Annotated[float, _quantity("bytes_per_s")]
FlopsPerSecond = Annotated[float, _quantity("flops_per_s")]
Seconds = Annotated[float, _quantity("seconds")]
