"""corral.executor.stopping: the reason a cancel carries, the note a runtime logs, the deadline."""

from __future__ import annotations

import asyncio

import pytest

from corral.executor import stopping


async def test_deadline_raises_timeout_error_and_the_cancel_names_the_limit() -> None:
    seen: list[str] = []

    async def step() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError as exc:
            seen.append(stopping.note(exc, 10.0))
            raise

    with pytest.raises(TimeoutError):
        async with stopping.deadline(0.05):
            await step()
    assert seen == ["timeout after 0.05s: sending SIGTERM, then SIGKILL after 10s"]
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_deadline_passes_on_a_cancel_that_is_not_its_own() -> None:
    reasons: list[str] = []

    async def job() -> None:
        async with stopping.deadline(60):
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError as exc:
                reasons.append(stopping.reason(exc))
                raise

    task = asyncio.create_task(job())
    await asyncio.sleep(0.01)
    task.cancel("canceling: the server asked")
    with pytest.raises(asyncio.CancelledError):
        await task
    assert reasons == ["canceling: the server asked"]


async def test_deadline_lets_a_fast_body_finish_and_a_body_error_through() -> None:
    async with stopping.deadline(60):
        await asyncio.sleep(0)
    with pytest.raises(ValueError, match="boom"):
        async with stopping.deadline(60):
            raise ValueError("boom")
    await asyncio.sleep(0.01)  # no late cancel arrives from a deadline that was left


async def test_a_deadline_and_another_cancel_together_stay_a_cancel() -> None:
    async def job() -> None:
        async with stopping.deadline(0.01):
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                asyncio.current_task().cancel("shutdown")  # type: ignore[union-attr]
                await asyncio.sleep(0)  # the second cancel lands here
                raise

    with pytest.raises(asyncio.CancelledError):
        await asyncio.create_task(job())


def test_reason_is_one_bounded_line_and_has_a_default() -> None:
    assert stopping.reason(asyncio.CancelledError()) == "canceling"
    assert stopping.reason(asyncio.CancelledError("a\nb\t c")) == "a b c"
    assert len(stopping.reason(asyncio.CancelledError("x" * 10_000))) == stopping.MAX_REASON
    assert stopping.note(asyncio.CancelledError(), 0) == "canceling: sending SIGKILL"
    assert stopping.note(asyncio.CancelledError(), 90) == (
        "canceling: sending SIGTERM, then SIGKILL after 1m30s"
    )


def test_line_sink_puts_a_note_on_a_line_of_its_own() -> None:
    got: list[bytes] = []
    sink = stopping.LineSink(got.append)
    sink.say("first")
    sink(b"partial")
    sink.say("second")
    sink(b"whole\n")
    sink(b"")
    sink.say("third")
    assert b"".join(got) == b"[corral] first\npartial\n[corral] second\nwhole\n[corral] third\n"
