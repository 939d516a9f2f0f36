"""corral.protocol.versions against Sourcegraph's own tests: lib/api/version_check_test.go
(TestCheckSourcegraphVersion, every case), and the dequeue's payload rule of handler.go."""

from __future__ import annotations

import itertools

import pytest

from corral.protocol.versions import (
    InvalidVersion,
    check_sourcegraph_version,
    go_quote,
    job_version_for,
    parse_semver,
    version_error,
)

# (name, currentVersion, constraint, minDate, expected); "Invalid semantic version" is below.
VERSION_CHECK_TEST_GO = [
    ("Version matches constraint", "3.12.6", ">= 3.12.6", "2020-01-19", True),
    ("Release candidate version matches constraint", "3.12.6-rc.1", ">= 3.12.6-0", "2020-01-19", True),
    ("Newer release candidate version matches constraint", "3.12.6-rc.3", ">= 3.10.6-0", "2020-01-19", True),
    ("Version does not match constraint", "3.12.6", ">= 3.13", "2020-01-19", False),
    ("Constraint without patch version", "3.13.0", ">= 3.13", "2020-01-19", True),
    ("Dev version", "dev", ">= 3.13", "2020-01-19", True),
    ("Newer dev version", "0.0.0+dev", ">= 3.13", "2020-01-19", True),
    ("Seven character abbreviated hash", "54959_2020-01-29_9258595", ">= 999.13", "2020-01-19", True),
    (
        "Seven character abbreviated hash too old",
        "54959_2020-01-29_9258595",
        ">= 999.13",
        "2020-01-30",
        False,
    ),
    (
        "Seven character abbreviated hash matches date",
        "54959_2020-01-29_9258595",
        ">= 0.0",
        "2020-01-29",
        True,
    ),
    ("Twelve character abbreviated hash", "54959_2020-01-29_925859585436", ">= 999.13", "2020-01-19", True),
    (
        "Twelve character abbreviated hash too old",
        "54959_2020-01-29_925859585436",
        ">= 999.13",
        "2020-01-30",
        False,
    ),
    (
        "Twelve character abbreviated hash matches date",
        "54959_2020-01-29_925859585436",
        ">= 0.0",
        "2020-01-29",
        True,
    ),
    (
        "Twelve character abbreviated hash with tag",
        "54959_2020-01-29_4.4-925859585436",
        ">= 999.13",
        "2020-01-19",
        True,
    ),
    (
        "Twelve character abbreviated hash with tag too old and does not match constraint",
        "54959_2020-01-29_4.4-925859585436",
        ">= 999.13",
        "2020-01-30",
        False,
    ),
    (
        "Twelve character abbreviated hash with tag matches date",
        "54959_2020-01-29_4.4-925859585436",
        ">= 0.0",
        "2020-01-29",
        True,
    ),
    (
        "Forty character hash",
        "54959_2020-01-29_7db7d396346284fd0f8f79f130f38b16fb1d3d70",
        ">= 0.0",
        "2020-01-29",
        True,
    ),
    ("Daily release build", "5.1_231128_2023-06-27_5.0-7ac9ba347103", ">= 4.4", "2020-01-29", True),
]


@pytest.mark.parametrize(("name", "version", "constraint", "min_date", "expected"), VERSION_CHECK_TEST_GO)
def test_version_check_test_go(
    name: str, version: str, constraint: str, min_date: str, expected: bool
) -> None:
    assert check_sourcegraph_version(version, constraint, min_date) is expected, name


def test_invalid_semantic_version() -> None:
    with pytest.raises(InvalidVersion, match=r"^Invalid Semantic Version$"):
        check_sourcegraph_version("\n1.2", ">= 0.0", "2020-01-29")


@pytest.mark.parametrize("version", ["\n1.2", "1.2.3\n", "1.2.3 ", "1..2", "garbage", "", "v", "1.2.3.4"])
def test_what_masterminds_semver_refuses(version: str) -> None:
    with pytest.raises(InvalidVersion):
        parse_semver(version)


def test_segments_and_prereleases() -> None:
    assert parse_semver("4.2") == parse_semver("v4.2.0")
    assert parse_semver("1.2.3-rc.1+build.5").pre == "rc.1"
    # SemVer 2.0 precedence: numeric identifiers sort before words, a release after its prereleases.
    ordered = ["1.0.0-0", "1.0.0-1", "1.0.0-11", "1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-beta", "1.0.0"]
    for a, b in itertools.pairwise(ordered):
        assert parse_semver(a).compare(parse_semver(b)) == -1, (a, b)
        assert parse_semver(b).compare(parse_semver(a)) == 1
    assert parse_semver("1.0.0+a").compare(parse_semver("1.0.0+b")) == 0  # metadata is ignored
    with pytest.raises(InvalidVersion, match="value out of range"):
        parse_semver("99999999999999999999.0.0")


@pytest.mark.parametrize(
    ("version", "payload"),
    [
        ("", 1),
        ("0.0.0", 1),
        ("4.2", 1),
        ("4.2.9", 1),
        ("211111_2021-11-11_abcdef1", 1),
        ("4.3.0-0", 2),
        ("4.3.0-rc.1", 2),
        ("4.3.0", 2),
        ("5.2.3", 2),
        ("dev", 2),
        ("0.0.0+dev", 2),
        ("54959_2022-11-24_4.4-925859585436", 2),
    ],
)
def test_the_dequeue_payload(version: str, payload: int) -> None:
    """handler.go dequeue: no version is v1; else CheckSourcegraphVersion(v, ">= 4.3.0-0", "2022-11-24")."""
    assert job_version_for(version) == payload


def test_the_refusal_names_the_version_as_go_quotes_it() -> None:
    """handler_test.go "Invalid version": failed to check version "\\n1.2": Invalid Semantic Version."""
    with pytest.raises(InvalidVersion) as exc:
        job_version_for("\n1.2")
    assert version_error("\n1.2", exc.value) == 'failed to check version "\\n1.2": Invalid Semantic Version'
    assert go_quote('a"b\\c\x01\u00e9\u200b') == '"a\\"b\\\\c\\x01\u00e9\\u200b"'
