"""corral's version-skew rule (corral.protocol.versions.skew_problem), the one both sides apply."""

from __future__ import annotations

import pytest

from corral.protocol.versions import SKEW_RULE, InvalidVersion, is_dev_version, skew_problem


@pytest.mark.parametrize(
    ("executor", "server"),
    [
        ("0.1.0", "0.1.0"),
        ("0.1.0", "0.2.0"),
        ("0.2.0", "0.1.0"),
        ("1.4.9", "1.5.0"),
        ("1.5.0-rc.1", "1.4.0"),
        ("1.5", "1.4.2"),  # "1.5" reads as 1.5.0, as Masterminds/semver reads it
        ("dev", "7.0.0"),  # development builds are exempt, on either side
        ("0.0.0+dev", "3.1.0"),
        ("0.0.0", "3.1.0"),
        ("3.1.0", "0.0.0-local"),
    ],
)
def test_versions_that_may_work_together(executor: str, server: str) -> None:
    assert skew_problem(executor, server) is None


@pytest.mark.parametrize(
    ("executor", "server", "older"),
    [
        ("0.1.0", "0.3.0", "executor"),
        ("0.3.0", "0.1.0", "server"),
        ("1.0.0", "2.0.0", "executor"),  # another major, however close the minors
        ("2.1.0", "1.9.0", "server"),
        ("1.2.0", "1.4.0-rc.1", "executor"),
    ],
)
def test_versions_too_far_apart_are_refused_naming_both_and_the_rule(
    executor: str, server: str, older: str
) -> None:
    problem = skew_problem(executor, server)
    assert problem is not None
    assert f"executor version {executor}" in problem and f"server version {server}" in problem
    assert SKEW_RULE in problem and problem.endswith(f"upgrade the {older}")


@pytest.mark.parametrize("bad", ["garbage", "1.x", "", "1.2.3\n"])
def test_a_version_that_is_no_semver_is_an_error(bad: str) -> None:
    with pytest.raises(InvalidVersion):
        skew_problem(bad, "0.1.0")
    with pytest.raises(InvalidVersion):
        skew_problem("0.1.0", bad)


def test_dev_versions() -> None:
    assert all(map(is_dev_version, ["dev", "0.0.0", "0.0.0+dev", "0.0.0-x"]))
    assert not any(map(is_dev_version, ["0.0.1", "devel", "1.0.0+dev", "0.1.0"]))
