import pytest

from splitsim.hardware.units import parse_quantity


@pytest.mark.parametrize(("text", "kind", "expected"), [
    ("400 Gb/s", "bytes_per_s", 50e9),
    ("900 GB/s", "bytes_per_s", 900e9),
    ("80 GiB", "bytes", 80 * 2**30),
    ("80 GB", "bytes", 80e9),
    ("989 TFLOPS", "flops_per_s", 989e12),
    ("5 us", "seconds", 5e-6),
    ("1.5ms", "seconds", 1.5e-3),
    (42, "bytes", 42.0),
])
def test_readable_quantities_become_si_floats(text, kind, expected):
    assert parse_quantity(text, kind) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(("text", "kind"), [("900 GB", "bytes_per_s"), ("5 parsecs", "seconds"),
                                             ("fast", "bytes"), (True, "bytes")])
def test_wrong_or_unknown_units_are_refused(text, kind):
    with pytest.raises(ValueError):
        parse_quantity(text, kind)
