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


DEEP = b"[" * 100_000 + b"]" * 100_000  # JSON nested past Python's (and Go's) decoder


async def test_answers_nested_too_deeply_are_server_errors(h: Harness) -> None:
    """json.loads raises RecursionError, which is no ValueError: it must not escape the client
    (review of issue 11: it killed the executor's dequeue loop)."""
    import httpx

    from corral.errors import ServerError

    client = h.client()
    await client.heartbeat([], {})  # corral's server: cancelWatch is offered
    for op, call in [
        ("dequeue", client.dequeue),
        ("heartbeat", lambda: client.heartbeat([], {})),
        ("cancelWatch", lambda: client.cancel_watch([1], 0.01)),
    ]:
        h.transport.respond(op, httpx.Response(200, content=DEEP))
        with pytest.raises(ServerError, match=f"the server's answer to {op} .*JSON nested too deeply"):
            await call()
    # a job whose field is nested too deeply (hostile.py's second attack)
    field = b'{"id": 7, "redactedValues": ' + DEEP + b"}"
    h.transport.respond("dequeue", httpx.Response(200, content=field))
    with pytest.raises(ServerError, match="the server's answer to dequeue is JSON nested too deeply"):
        await client.dequeue()
    # an error answer is decoded for its message: nested too deeply, it is a plain 4xx
    h.transport.respond("dequeue", httpx.Response(400, content=DEEP))
    with pytest.raises(ServerError, match="400") as info:
        await client.dequeue()
    assert info.value.status == 400 and len(info.value.message) < 2100  # the first ERROR_BODY bytes


async def test_the_worker_survives_a_dequeue_answer_nested_too_deeply(h: Harness) -> None:
    import httpx

    fake = FakeRuntime()
    h.transport.respond("dequeue", httpx.Response(200, content=DEEP), times=1)
    h.transport.respond("heartbeat", httpx.Response(200, content=DEEP), times=2)
    async with h.running(h.worker(fake)):
        job_id = await h.submit(fake_step())
        view = await h.wait_for(job_id)
    assert view["state"] == "completed", view
    assert next(s.status for s in h.transport.sent if s.op == "dequeue") == 200  # the deep one came first


async def test_an_unexpected_dequeue_error_does_not_end_the_executor(h: Harness, caplog) -> None:
    fake = FakeRuntime()
    worker = h.worker(fake)
    real, broken = worker.client.dequeue, {"left": 1}

    async def flaky(wait: float = 0.0):
        if broken["left"]:
            broken["left"] -= 1
            raise RecursionError("a library error the client did not map")
        return await real(wait)

    worker.client.dequeue = flaky  # type: ignore[method-assign]
    async with h.running(worker):
        job_id = await h.submit(fake_step())
        view = await h.wait_for(job_id)
    assert view["state"] == "completed" and not broken["left"], view
    assert "dequeue failed unexpectedly" in caplog.text


async def test_answers_are_read_at_most_their_bound(h: Harness) -> None:
    """A heartbeat, cancelWatch or log answer over MAX_ANSWER, a dequeue answer over
    MAX_DEQUEUE_ANSWER: a ServerError naming the bound, and the body is read no further (with or
    without a Content-Length)."""
    import httpx

    from corral.errors import ServerError
    from corral.executor.client import MAX_ANSWER, MAX_DEQUEUE_ANSWER

    assert MAX_ANSWER == 16 * 1024 * 1024 and MAX_DEQUEUE_ANSWER == 64 * 1024 * 1024
    chunk = b" " * (1024 * 1024)
    pulled = {"n": 0}
    answers: dict[str, httpx.Response] = {}

    async def endless():  # a server that never stops sending: bounded by the test, not by the client
        for _ in range(200):
            pulled["n"] += 1
            yield chunk

    def server(request: httpx.Request) -> httpx.Response:
        return answers[request.url.path.rsplit("/", 1)[-1]]

    client = h.client(transport=httpx.MockTransport(server))
    answers["heartbeat"] = httpx.Response(200, content=endless())
    with pytest.raises(
        ServerError, match=f"heartbeat: the server's answer is larger than {MAX_ANSWER} bytes"
    ):
        await client.heartbeat([], {})
    assert pulled["n"] == MAX_ANSWER // len(chunk) + 1  # stopped at the first chunk past the bound
    pulled["n"] = 0
    answers["cancelWatch"] = httpx.Response(
        200, headers={"content-length": str(MAX_ANSWER + 1)}, content=endless()
    )
    with pytest.raises(ServerError, match=f"cancelWatch: the server's answer is larger than {MAX_ANSWER}"):
        await client.cancel_watch([1], 0.01)
    assert pulled["n"] == 0  # its Content-Length said enough
    answers["dequeue"] = httpx.Response(200, content=endless())
    with pytest.raises(ServerError, match=f"larger than {MAX_DEQUEUE_ANSWER} bytes"):
        await client.dequeue()
    assert pulled["n"] == MAX_DEQUEUE_ANSWER // len(chunk) + 1
    # a dequeue answer between the two bounds is a job (a job may carry 32 MiB of files, base64)
    big = {"id": 3, "files": {"f": {"content": "QUJD" * (5 * 1024 * 1024)}}, "version": 2}
    answers["dequeue"] = httpx.Response(200, json=big)
    job = await client.dequeue()
    assert job is not None and job.id == 3 and len(job.files["f"].content or "") > MAX_ANSWER


# -- the dequeue answer's queue (review of issue 11: it became a host path) ---------------------------
def _evil_queue(h: Harness) -> str:
    return "batches/" + "../" * 12 + str(h.data_dir / "escaped").lstrip("/")


async def test_a_job_of_a_queue_this_executor_does_not_serve_is_refused(h: Harness) -> None:
    import httpx

    from corral.errors import ServerError

    answers: list[dict] = []
    client = h.client(
        h.executor_settings(queues=["batches", "codeintel"]),
        transport=httpx.MockTransport(lambda r: httpx.Response(200, json=answers.pop(0))),
    )
    for queue in (_evil_queue(h), "other", "", None, "Batches"):
        answers.append({"id": 7, "queue": queue, "token": "T", "version": 2})
        with pytest.raises(ServerError, match=r"this executor does not serve \(batches, codeintel\); not"):
            await client.dequeue()
    answers.append({"id": 7, "queue": "codeintel", "token": "T", "version": 2})
    job = await client.dequeue()
    assert job is not None and job.queue == "codeintel"
    one = h.client(transport=httpx.MockTransport(lambda r: httpx.Response(200, json=answers.pop(0))))
    answers.append({"id": 8, "token": "T"})  # one queue: Sourcegraph's answer names none
    job = await one.dequeue()
    assert job is not None and job.queue == "batches"
    answers.append({"id": 8, "queue": "codeintel", "token": "T"})
    with pytest.raises(ServerError, match="of queue 'codeintel', which this executor does not serve"):
        await one.dequeue()


async def test_the_worker_never_runs_a_job_whose_queue_escapes_the_workspace_root(h: Harness) -> None:
    import httpx

    fake = FakeRuntime()
    settings = h.executor_settings(queues=["batches", "codeintel"], keep_workspaces=True)
    evil = {"id": 99, "queue": _evil_queue(h), "token": "T", "version": 2, "dockerSteps": [fake_step()]}
    h.transport.respond("dequeue", httpx.Response(200, json=evil), times=1)
    async with h.running(h.worker(fake, settings)):
        job_id = await h.submit(fake_step())
        view = await h.wait_for(job_id)
    assert view["state"] == "completed", view  # the next dequeue's job ran
    assert not (h.data_dir / "escaped").exists()
    assert not [p for p in h.data_dir.rglob("*escaped*")]
    assert fake.attempts(99) == [], "the refused job never ran"


# -- against a Sourcegraph frontend (tests/compat/sgfrontend.py, in-process) --------------------------
SG_URL = "http://sourcegraph.test"  # never resolved: requests go through the ASGI transport


def sourcegraph(h: Harness, **options):
    """The Sourcegraph stand-in and a FaultyTransport to it (records what the executor sends)."""
    import httpx

    from corral.testing import EXECUTOR_SECRET, FaultyTransport
    from tests.compat.sgfrontend import Frontend

    sg = Frontend(EXECUTOR_SECRET, **options)
    return sg, FaultyTransport(httpx.ASGITransport(app=sg.app))


def sg_settings(h: Harness, *queues: str, **overrides):
    return h.executor_settings(**{"frontend_url": SG_URL, "queues": list(queues or ["batches"]), **overrides})


async def test_job_7_of_two_queues_runs_side_by_side_and_a_cancel_reaches_only_its_own(h: Harness) -> None:
    """Sourcegraph keys running jobs <id>-<queue>: 7-batches and 7-codeintel are two jobs."""
    from tests.compat.sgfrontend import SgJob

    sg, transport = sourcegraph(h)
    sg.enqueue(SgJob(7, "batches", docker_steps=[fake_step(FAKE_SLEEP=1.0)]))
    sg.enqueue(SgJob(7, "codeintel", docker_steps=[fake_step(FAKE_SLEEP=30)]))
    fake = FakeRuntime()
    settings = sg_settings(h, "batches", "codeintel", maximum_num_jobs=2)
    async with h.running(h.worker(fake, settings, transport=transport)) as worker:
        batches = await fake.wait_step("batches-7")
        codeintel = await fake.wait_step("codeintel-7")
        assert set(worker.running) == {"7-batches", "7-codeintel"}

        def both_heartbeated() -> bool:
            bodies = [s.body for s in transport.sent if s.op == "heartbeat" and s.body.get("jobIdsByQueue")]
            return any(len(b["jobIdsByQueue"]) == 2 for b in bodies)

        await _until(both_heartbeated)
        sg.request_cancel("codeintel", 7)
        await _until(lambda: sg.job("codeintel", 7).state == "canceled")
        await _until(lambda: sg.job("batches", 7).state == "completed")
    assert codeintel.term_at is not None and sg.job("codeintel", 7).failure == "canceled"
    assert batches.term_at is None and batches.exit_code == 0
    body = next(b for b in (s.body for s in transport.sent if s.op == "heartbeat") if b.get("jobIdsByQueue"))
    assert body["version"] == "" and body["queueNames"] == ["batches", "codeintel"]
    assert [g["queueName"] for g in body["jobIdsByQueue"]] == sorted(
        g["queueName"] for g in body["jobIdsByQueue"]
    )


async def test_a_job_missing_from_known_ids_is_dropped_stopped_and_never_marked(h: Harness) -> None:
    from tests.compat.sgfrontend import SgJob

    sg, transport = sourcegraph(h)
    sg.enqueue(SgJob(5, "batches", docker_steps=[fake_step(FAKE_SLEEP=30)]))
    fake = FakeRuntime()
    async with h.running(h.worker(fake, sg_settings(h), transport=transport)) as worker:
        proc = await fake.wait_step("batches-5")
        sg.give_away("batches", 5)  # reset and taken by another executor: not ours any more
        await _until(lambda: proc.ended_at is not None)
        await _until(lambda: not worker.dropped and not worker.running)
        assert fake.methods("batches-5")[-1] == "cleanup"
        sent = len(transport.sent)
        await asyncio.sleep(0.2)  # a few heartbeats later: the job is never heartbeated again
        later = [s.body for s in transport.sent[sent:] if s.op == "heartbeat"]
        assert later and all(b["jobIds"] is None for b in later)
    assert proc.term_at is not None, "its work stops: Sourcegraph's IDSet.Remove cancels the job's context"
    assert not [s for s in transport.sent if s.op.startswith("mark")], "a dropped job is never marked"
    assert sg.job("batches", 5).state == "processing" and sg.job("batches", 5).worker == "another-executor"


async def test_the_one_queue_heartbeat_speaks_v2_and_sends_sourcegraphs_telemetry(h: Harness) -> None:
    from corral.executor.telemetry import TELEMETRY_KEYS, go_arch
    from tests.compat.sgfrontend import SgJob

    sg, transport = sourcegraph(h, old_heartbeat=True)  # a 4.x server: answers without V2 with an array
    sg.enqueue(SgJob(3, "batches", docker_steps=[fake_step(FAKE_SLEEP=0.5)]))
    fake = FakeRuntime()
    async with h.running(h.worker(fake, sg_settings(h), transport=transport)):
        await fake.wait_step("batches-3")
        await _until(lambda: sg.job("batches", 3).state == "completed")
    bodies = [s.body for s in transport.sent if s.op == "heartbeat"]
    assert all(b["version"] == "V2" for b in bodies)
    assert bodies[0]["jobIds"] is None  # Go marshals the empty slice of the start-up ping as null
    assert any(b["jobIds"] == [3] for b in bodies)  # ints, as HeartbeatRequestV1
    assert all(set(TELEMETRY_KEYS) <= set(b) for b in bodies)
    b = bodies[-1]
    assert b["os"] == "linux" and b["architecture"] == go_arch() and b["architecture"] in ("amd64", "arm64")
    assert b["gitVersion"] and not b["gitVersion"].startswith("git version")
    assert "# TYPE" in b["prometheusMetrics"] and b["igniteVersion"] == ""
    assert sg.job("batches", 3).state == "completed"  # never dropped: V2 got the object answer


async def test_an_old_bare_array_heartbeat_answer_is_understood(h: Harness) -> None:
    import httpx

    client = h.client()
    job_id = await h.submit(fake_step())
    job = await h.dequeue(client)
    h.transport.respond("heartbeat", httpx.Response(200, json=[job_id, 99]))
    assert await client.heartbeat([job], {}) == ({f"{job_id}-batches", "99-batches"}, set())
    h.transport.respond("heartbeat", httpx.Response(200, content=b"null"))
    assert await client.heartbeat([job], {}) == (set(), set())
    h.transport.respond(
        "heartbeat", httpx.Response(200, json={"KnownIDs": [float(job_id)], "cancelIds": None})
    )
    assert await client.heartbeat([job], {}) == ({f"{job_id}-batches"}, set())


async def test_heartbeat_failures_never_stop_heartbeats(h: Harness) -> None:
    import httpx

    fake = FakeRuntime()
    worker = h.worker(fake)
    async with h.running(worker):
        job_id = await h.submit(fake_step(FAKE_SLEEP=1.0))
        await fake.wait_step(job_id)
        h.transport.fail("heartbeat", status=503, times=2)
        h.transport.fail("heartbeat", status=None, times=1)  # unreachable
        h.transport.respond("heartbeat", httpx.Response(200, text="<html>proxy</html>"), times=1)
        real = worker.client.heartbeat
        broken = {"left": 1}

        async def flaky(jobs, telemetry):
            if broken["left"]:
                broken["left"] -= 1
                raise RuntimeError("a bug in the client")
            return await real(jobs, telemetry)

        worker.client.heartbeat = flaky  # type: ignore[method-assign]
        await _until(lambda: not broken["left"])
        mark = len(h.transport.sent)
        await _until(lambda: any(s.op == "heartbeat" and s.status == 200 for s in h.transport.sent[mark:]))
        view = await h.wait_for(job_id)
    assert view["state"] == "completed", view
    statuses = [s.status for s in h.transport.sent if s.op == "heartbeat"]
    assert statuses.count(503) == 2 and None in statuses


async def test_the_dequeue_body_is_sourcegraphs(h: Harness) -> None:
    from corral import __version__
    from corral.executor.client import SOURCEGRAPH_PROTOCOL_VERSION

    settings = h.executor_settings(job_memory=12 * 1024**3, job_disk_space=20 * 1024**3, job_num_cpus=4)
    corral = h.client(settings)
    await corral.heartbeat([], {})
    await corral.dequeue()
    _sg, transport = sourcegraph(h)
    other = h.client(sg_settings(h, job_memory=1536 * 1024**2, job_num_cpus=0.5), transport=transport)
    await other.heartbeat([], {})
    await other.dequeue()
    ours = next(s.body for s in h.transport.sent if s.op == "dequeue")
    theirs = next(s.body for s in transport.sent if s.op == "dequeue")
    assert corral.server_is_corral and not other.server_is_corral
    assert ours["version"] == __version__ and theirs["version"] == SOURCEGRAPH_PROTOCOL_VERSION == "0.0.0+dev"
    assert (ours["numCPUs"], ours["memory"], ours["diskSpace"]) == (4, "12G", "20G")
    assert "numCPUs" not in theirs and theirs["memory"] == "1536M"  # 0 CPUs is omitted, as omitempty


async def test_a_path_prefix_in_the_frontend_url_is_kept_for_every_call(h: Harness) -> None:
    from tests.compat.sgfrontend import SgFile, SgJob

    sg, transport = sourcegraph(h, prefix="/sg")
    sg.files[("batch-changes", "spec/f")] = b"remote"
    sg.enqueue(SgJob(4, "batches", files={"r.txt": SgFile(bucket="batch-changes", key="spec/f")}))
    sg.jobs[("batches", 4)].docker_steps = [fake_step()]
    fake = FakeRuntime()
    settings = sg_settings(h, frontend_url=SG_URL + "/sg")
    async with h.running(h.worker(fake, settings, transport=transport)):
        await _until(lambda: sg.job("batches", 4).state == "completed")
    paths = {s.path for s in transport.sent}
    assert all(p.startswith("/sg/.executors/") for p in paths), paths
    assert "/sg/.executors/files/batch-changes/spec/f" in paths


def test_a_repeating_failure_is_logged_once_then_reminded(caplog) -> None:
    from corral.executor.worker import REMIND_EVERY, FailureLog

    now = [0.0]
    flog = FailureLog("server not ready", clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="corral.executor"):
        for _ in range(50):  # a server down for 50 tries, one second apart
            flog.failed(ConnectionError("connection refused"), 1.0)
            now[0] += 1.0
        flog.failed(ConnectionError("503 starting"), 1.0)  # a new message is logged at once
        now[0] += REMIND_EVERY
        flog.failed(ConnectionError("503 starting"), 1.0)  # the same one again after a minute
        flog.recovered()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 4, lines
    assert "connection refused" in lines[0] and "503 starting" in lines[1]
    assert "1 more tries" not in lines[2] and "503 starting" in lines[2] and lines[3].endswith("recovered")


async def test_an_executor_waits_quietly_on_a_queue_with_no_jobs_yet(h: Harness, caplog) -> None:
    fake = FakeRuntime()
    settings = h.executor_settings(queues=["fresh-queue"])
    with caplog.at_level(logging.INFO, logger="corral.executor"):
        async with h.running(h.worker(fake, settings)):
            for _ in range(100):  # bounded: until the start-up ping got its answer
                if any("connected to" in r.getMessage() for r in caplog.records):
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.2)  # a few dequeues of the empty, never-used queue
            warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("connected to" in r.getMessage() for r in caplog.records)
    assert warnings == []
