"""corral.executor.janitor.orphans: the janitor's decision, alone."""

from __future__ import annotations

from corral.executor.janitor import orphans


def test_resources_of_live_jobs_are_kept() -> None:
    running = {"corral-q-1": "q-1", "corral-q-2": "q-2", "corral-r-1": "r-1"}
    assert orphans(running, {"q-1", "r-1"}) == ["corral-q-2"]


def test_nothing_live_means_everything_goes_and_nothing_found_means_nothing() -> None:
    assert orphans({"b": "q-2", "a": "q-1"}, set()) == ["a", "b"]
    assert orphans({}, {"q-1"}) == []


def test_a_resource_without_a_label_is_an_orphan() -> None:
    assert orphans({"stray": None}, {"q-1"}) == ["stray"]
