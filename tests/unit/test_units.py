"""corral.units: Go-style durations and sizes, parsed and formatted, and their pydantic types."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ValidationError

from corral.units import Duration, Size, format_duration, format_size, human_size, parse_duration, parse_size


@pytest.mark.parametrize(("text", "seconds"), [("500ms", 0.5), ("1m30s", 90.0), ("2h", 7200.0), ("30", 30.0)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("seconds", [5, 90, 1800, 3723])
def test_duration_round_trip(seconds: int) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize("size", [0, 1000, 1536, 64 * 1024, 12 * 1024**3, 2 * 1024**4])
def test_size_round_trip(size: int) -> None:
    assert parse_size(format_size(size)) == size


def test_format_size_uses_the_largest_exact_unit() -> None:
    assert format_size(12 * 1024**3) == "12G"
    assert format_size(1536) == "1536"  # 1.5K is not exact in K: bytes
    assert format_size(3 * 1024) == "3K"
    assert format_size(1000) == "1000"


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0B"),
        (900, "900B"),
        (1536, "1.5K"),
        (512 * 1024**2, "512M"),
        (int(23.44 * 1024**3), "23.4G"),
        (1024**4, "1T"),
        (3 * 1024**4 + 1, "3T"),
    ],
)
def test_human_size(size: int, text: str) -> None:
    assert human_size(size) == text


class _Model(BaseModel):
    timeout: Duration = 1.0
    memory: Size = 0


def test_pydantic_types_parse_strings_and_keep_numbers() -> None:
    m = _Model.model_validate({"timeout": "1m30s", "memory": "1Gi"})
    assert (m.timeout, m.memory) == (90.0, 1024**3)
    assert _Model(timeout=2.5, memory=7).timeout == 2.5


def test_pydantic_types_name_the_bad_value() -> None:
    with pytest.raises(ValidationError) as err:
        _Model.model_validate({"timeout": "soon"})
    assert "'soon' is not a duration" in str(err.value)
    with pytest.raises(ValidationError) as err:
        _Model.model_validate({"memory": "lots"})
    assert "'lots' is not a size" in str(err.value)
