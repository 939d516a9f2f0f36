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


class _Runtime:
    """A runtime whose janitor reports what it removed (the real runtimes list only their owner's)."""

    name = "stub"

    def __init__(self, removes: list[str]) -> None:
        self.removes, self.asked = removes, []

    async def janitor(self, live: set[str]) -> list[str]:
        self.asked.append(set(live))
        return list(self.removes)


async def test_a_sweep_logs_every_removal_and_touches_only_its_own_workspaces(tmp_path, caplog) -> None:
    import logging

    from corral.executor.janitor import sweep_once

    mine = tmp_path / "local-1a2b3c4d.batches-7-1-cafe"  # an orphan of ours
    live = tmp_path / "local-1a2b3c4d.batches-8-1-beef"  # ours, still running
    theirs = tmp_path / "executor.batches-7-1-cafe"  # another executor's (the default prefix)
    for d in (mine, live, theirs):
        d.mkdir()
    runtime = _Runtime(["corral-batches-7-1-cafe-0"])
    with caplog.at_level(logging.INFO, logger="corral.executor"):
        removed = await sweep_once(
            [runtime],
            lambda: {"batches-8"},
            workspace_root=tmp_path,
            owner="local-1a2b3c4d",
            keep_workspaces=False,
        )
    assert removed == ["workspace local-1a2b3c4d.batches-7-1-cafe", "stub corral-batches-7-1-cafe-0"]
    assert not mine.exists() and live.exists() and theirs.exists()
    assert runtime.asked == [{"batches-8"}]
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert lines == [
        "janitor (owner local-1a2b3c4d): removed workspace local-1a2b3c4d.batches-7-1-cafe: "
        "its job no longer runs here",
        "janitor (owner local-1a2b3c4d): removed stub corral-batches-7-1-cafe-0: its job no longer runs here",
    ]


async def test_a_sweep_that_removes_nothing_says_nothing(tmp_path, caplog) -> None:
    import logging

    from corral.executor.janitor import sweep_once

    (tmp_path / "executor.batches-7-1-cafe").mkdir()
    with caplog.at_level(logging.INFO, logger="corral.executor"):
        assert (
            await sweep_once(
                [_Runtime([])], set, workspace_root=tmp_path, owner="mine", keep_workspaces=False
            )
            == []
        )
    assert caplog.records == []
    assert (tmp_path / "executor.batches-7-1-cafe").exists()
