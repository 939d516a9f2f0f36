"""Worker with the FakeRuntime against the in-process server: pickup, server cancel, the heartbeat's
"not yours", shutdown (first stop drains, second cancels), dequeue retries, the job slots and the
janitor, without root, docker or sockets."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from corral.executor.runtimes.base import JobSpace
from corral.testing import FakeRuntime, Harness, fake_step

GRACE = 0.2  # seconds: the harness's EXECUTOR_KILL_GRACE


@pytest.fixture
async def h(tmp_path: Path):
    async with Harness(tmp_path) as harness:
        yield harness


async def test_a_job_is_picked_up_and_completed(h: Harness) -> None:
    fake = FakeRuntime()
    async with h.running(h.worker(fake)):
        job_id = await h.submit(fake_step(FAKE_OUTPUT="hi"))
        view = await h.wait_for(job_id)
    assert view["state"] == "completed", view
    assert view["executorName"] == "fake-executor"
    assert fake.methods(job_id) == ["prepare", "run_step", "cleanup"]


async def test_a_server_cancel_stops_the_step_and_the_job_is_canceled(h: Harness) -> None:
    fake = FakeRuntime()
    async with h.running(h.worker(fake)):
        job_id = await h.submit(fake_step(FAKE_SLEEP=30))
        proc = await fake.wait_step(job_id)
        await h.cancel(job_id)
        view = await h.wait_for(job_id)
    assert view["state"] == "canceled", view
    assert proc.term_at is not None and proc.killed_at is None and proc.exit_code == 143
    assert fake.methods(job_id)[-1] == "cleanup"


async def test_a_server_cancel_gives_the_step_its_whole_kill_grace(h: Harness) -> None:
    fake = FakeRuntime()
    async with h.running(h.worker(fake)):
        job_id = await h.submit(fake_step(FAKE_SLEEP=30, FAKE_IGNORE_TERM=1))
        proc = await fake.wait_step(job_id)
        await h.cancel(job_id)
        view = await h.wait_for(job_id)
    assert view["state"] == "canceled", view
    assert proc.killed_at is not None and proc.killed_at - proc.term_at >= GRACE * 0.9


async def test_a_server_cancel_reaches_a_plain_sourcegraph_executor_through_the_heartbeat(h: Harness) -> None:
    fake = FakeRuntime()
    settings = h.executor_settings(extensions=False)  # no cancel watch, no long-poll: heartbeats only
    async with h.running(h.worker(fake, settings)):
        job_id = await h.submit(fake_step(FAKE_SLEEP=30))
        proc = await fake.wait_step(job_id)
        await h.cancel(job_id)
        view = await h.wait_for(job_id)
    assert view["state"] == "canceled", view
    assert proc.term_at is not None and proc.killed_at is None
    assert not any(s.op == "cancelWatch" for s in h.transport.sent)


async def test_a_job_the_heartbeat_no_longer_knows_is_stopped(h: Harness, caplog) -> None:
    fake = FakeRuntime()
    caplog.set_level(logging.INFO, logger="corral.executor")
    async with h.running(h.worker(fake)):
        job_id = await h.submit(fake_step(FAKE_SLEEP=30))
        proc = await fake.wait_step(job_id)
        fault = h.transport.fail("heartbeat", status=503)  # the executor goes silent...
        await asyncio.sleep(0.1)
        h.advance(h.settings.stalled_after + 1)  # ...long enough for the resetter to requeue the job
        await h.wait_for(job_id, "queued", "processing")
        h.transport.faults.remove(fault)
        await asyncio.wait_for(_until(lambda: proc.ended_at is not None), 5)
    assert proc.term_at is not None, "the executor must stop a job the server gave back"
    assert "the server no longer considers it ours" in caplog.text


async def test_the_first_stop_lets_the_running_job_finish(h: Harness) -> None:
    fake = FakeRuntime()
    worker = h.worker(fake)
    task = asyncio.create_task(worker.run(install_signals=False))
    job_id = await h.submit(fake_step(FAKE_SLEEP=0.3))
    proc = await fake.wait_step(job_id)
    worker.stop()
    await asyncio.wait_for(task, 5)
    assert proc.term_at is None and proc.exit_code == 0
    assert (await h.job(job_id))["state"] == "completed"
    second = await h.submit(fake_step())
    await asyncio.sleep(0.1)
    assert (await h.job(second))["state"] == "queued"  # nothing is taken after a stop


async def test_the_second_stop_cancels_the_running_job(h: Harness) -> None:
    fake = FakeRuntime()
    worker = h.worker(fake)
    task = asyncio.create_task(worker.run(install_signals=False))
    job_id = await h.submit(fake_step(FAKE_SLEEP=30))
    proc = await fake.wait_step(job_id)
    worker.stop()
    await asyncio.sleep(0.05)
    assert proc.running
    worker.stop()
    await asyncio.wait_for(task, 5)
    assert proc.term_at is not None
    view = await h.job(job_id)  # errored, so another executor retries it: a restart fails nothing for good
    assert view["error"] == "the executor shut down before the job finished", view
    assert view["state"] in ("errored", "queued"), view


async def test_the_shutdown_grace_cancels_what_still_runs(h: Harness) -> None:
    fake = FakeRuntime()
    worker = h.worker(fake, h.executor_settings(shutdown_grace=0.1))
    task = asyncio.create_task(worker.run(install_signals=False))
    job_id = await h.submit(fake_step(FAKE_SLEEP=30))
    proc = await fake.wait_step(job_id)
    worker.stop()
    try:
        await asyncio.wait_for(asyncio.shield(task), 1.0)
    finally:
        if not task.done():
            worker.stop()  # the second stop ends it, so the harness closes cleanly
            await asyncio.wait_for(task, 5)
    assert proc.term_at is not None
    assert (await h.job(job_id))["error"] == "the executor shut down before the job finished"


async def test_a_failing_dequeue_is_retried_with_backoff(h: Harness) -> None:
    fake = FakeRuntime()
    h.transport.fail("dequeue", status=500, times=2)
    async with h.running(h.worker(fake)):
        job_id = await h.submit(fake_step())
        view = await h.wait_for(job_id)
    assert view["state"] == "completed", view
    dequeues = [s.status for s in h.transport.sent if s.op == "dequeue"]
    assert dequeues[:2] == [500, 500] and 200 in dequeues


async def test_jobs_run_at_once_up_to_maximum_num_jobs(h: Harness) -> None:
    fake = FakeRuntime()
    worker = h.worker(fake, h.executor_settings(maximum_num_jobs=3))
    async with h.running(worker):
        ids = [await h.submit(fake_step(FAKE_SLEEP=0.3)) for _ in range(5)]
        views = [await h.wait_for(i) for i in ids]
    assert [v["state"] for v in views] == ["completed"] * 5
    assert fake.max_active == 3


async def test_an_injected_handler_is_used(h: Harness) -> None:
    fake, other = FakeRuntime(), FakeRuntime()
    handler = h.handler(other)
    worker = h.worker(fake, handler=handler)
    assert worker.handler is handler
    async with h.running(worker):
        job_id = await h.submit(fake_step())
        assert (await h.wait_for(job_id))["state"] == "completed"
    assert other.methods(job_id) == ["prepare", "run_step", "cleanup"]
    assert not fake.jobs


async def test_the_janitor_removes_what_no_running_job_owns(h: Harness, tmp_path: Path) -> None:
    fake = FakeRuntime()
    orphan = JobSpace(job_id=99, queue="batches", root=tmp_path / "gone", workspace=tmp_path / "gone/ws")
    await fake.prepare(orphan)  # left by an executor that died mid-job
    async with h.running(h.worker(fake)):
        job_id = await h.submit(fake_step(FAKE_SLEEP=0.3))
        await fake.wait_step(job_id)
        await _until(lambda: fake.job(99).swept)
        assert fake.job(job_id).live  # the running job's resources stay
        await h.wait_for(job_id)
    assert any("batches-" + str(job_id) in c.live for c in fake.calls if c.method == "janitor")


async def _until(probe, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not probe():
            await asyncio.sleep(0.005)


async def test_malformed_server_answers_do_not_stop_heartbeats_or_the_executor(h: Harness) -> None:
    """An HTML page or ids that are not numbers, as a proxy or a broken server may answer: the client
    says what is wrong (ServerError) and every loop carries on."""
    import httpx

    from corral.errors import ServerError

    client = h.client()
    for path, body in [("heartbeat", "<html>proxy error</html>"), ("heartbeat", '{"knownIds": ["abc"]}')]:
        h.transport.respond(
            path, httpx.Response(200, text=body, headers={"content-type": "application/json"})
        )
        with pytest.raises(
            ServerError, match="the server's answer to heartbeat is not what the protocol says"
        ):
            await client.heartbeat([], {})
    h.transport.respond("dequeue", httpx.Response(200, json={"id": "not-a-number"}))
    with pytest.raises(ServerError, match="the server's answer to dequeue"):
        await client.dequeue()
