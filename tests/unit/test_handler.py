"""JobHandler with the FakeRuntime against the in-process server (corral.testing.Harness): every
outcome, cancel, the kill grace, the job timeout, a fenced attempt and server errors, in
milliseconds, without root, docker or sockets."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from corral.testing import FakeRuntime, Harness, fake_step

GRACE = 0.2  # seconds: the harness's EXECUTOR_KILL_GRACE


@pytest.fixture
async def h(tmp_path: Path):
    async with Harness(tmp_path) as harness:
        yield harness


async def run(h: Harness, fake: FakeRuntime, *steps, settings=None, retry_for: float = 2.0, **spec):
    """Submit a job, dequeue it and handle it to the end; returns (job id, the producer's view)."""
    job_id = await h.submit(*steps, **spec)
    handler = h.handler(fake, settings, retry_for=retry_for)
    job = await h.dequeue(handler.client)
    await handler.handle(job)
    return job_id, await h.job(job_id)


async def start(h: Harness, fake: FakeRuntime, *steps, settings=None, **spec):
    """Submit a job and start handling it in a task; returns (job id, the task, its first step)."""
    job_id = await h.submit(*steps, **spec)
    handler = h.handler(fake, settings)
    job = await h.dequeue(handler.client)
    task = asyncio.create_task(handler.handle(job))
    proc = await fake.wait_step(job_id)
    return job_id, task, proc


# -- outcomes --------------------------------------------------------------------------------------
async def test_every_step_exits_zero_completes_and_ships_the_output(h: Harness) -> None:
    fake = FakeRuntime()
    job_id, view = await run(
        h, fake, fake_step(FAKE_OUTPUT="hello world, in chunks", FAKE_CHUNK=4), fake_step()
    )
    assert view["state"] == "completed", view
    assert view["error"] is None
    assert fake.methods(job_id) == ["prepare", "run_step", "run_step", "cleanup"]
    logs = await h.logs(job_id)
    assert [(e["key"], e["exitCode"]) for e in logs] == [("step.docker.0", 0), ("step.docker.1", 0)]
    assert logs[0]["out"] == "hello world, in chunks"
    assert view["exitCodes"] == [0, 0]


async def test_a_non_zero_exit_fails_the_job_and_skips_the_next_steps(h: Harness) -> None:
    fake = FakeRuntime()
    job_id, view = await run(h, fake, fake_step(), fake_step(FAKE_EXIT=3), fake_step())
    assert view["state"] == "failed", view
    assert view["error"] == "step.docker.1 failed with exit code 3"
    assert fake.methods(job_id) == ["prepare", "run_step", "run_step", "cleanup"]
    assert view["exitCodes"] == [0, 3]


async def test_an_oom_kill_fails_the_job_with_the_memory_limit(h: Harness) -> None:
    fake = FakeRuntime()
    settings = h.executor_settings(job_memory=64 * 1024**2)
    job_id, view = await run(h, fake, fake_step(FAKE_OOM=1), settings=settings)
    assert view["state"] == "failed", view
    assert view["error"] == "step.docker.0 was killed: out of memory (limit 64 MiB)"
    assert "killed: out of memory (limit 64 MiB)" in (await h.logs(job_id))[0]["out"]


async def test_a_missing_image_fails_the_job_and_names_the_image(h: Harness) -> None:
    fake = FakeRuntime()
    job_id, view = await run(h, fake, fake_step(image="nowhere/nothing:1", FAKE_IMAGE_MISSING=1))
    assert view["state"] == "failed", view
    assert view["error"].startswith("step.docker.0: image nowhere/nothing:1 not found")
    assert fake.methods(job_id)[-1] == "cleanup"


async def test_a_setup_error_errors_the_job_for_a_retry_and_still_cleans_up(h: Harness) -> None:
    fake = FakeRuntime(prepare_error="the sandbox could not be built")
    job_id, view = await run(h, fake, fake_step())
    assert view["state"] == "errored", view
    assert view["error"] == "the sandbox could not be built"
    assert fake.methods(job_id) == ["prepare", "cleanup"]


async def test_a_runtime_that_breaks_mid_job_errors_the_job(h: Harness) -> None:
    fake = FakeRuntime()
    job_id, view = await run(h, fake, fake_step(), fake_step(FAKE_ERROR="the engine went away"))
    assert view["state"] == "errored", view
    assert view["error"] == "the engine went away"
    assert fake.methods(job_id)[-1] == "cleanup"


async def test_declared_outputs_are_uploaded_with_the_result(h: Harness) -> None:
    fake = FakeRuntime()
    job_id, view = await run(
        h, fake, fake_step(FAKE_WRITE="out/report.txt=42 findings"), outputs=["out/report.txt"]
    )
    assert view["state"] == "completed", view
    r = await h.admin.get(f"/api/v1/jobs/{job_id}/result")
    assert r.status_code == 200, r.text
    assert list(r.json()["files"]) == ["out/report.txt"]


async def test_redacted_values_never_reach_the_log(h: Harness) -> None:
    fake = FakeRuntime()
    job_id, _view = await run(
        h,
        fake,
        fake_step(FAKE_OUTPUT="token=hunter2-secret-value", FAKE_CHUNK=3),
        redactedValues={"hunter2-secret-value": "PASSWORD"},
    )
    out = (await h.logs(job_id))[0]["out"]
    assert "hunter2" not in out and "PASSWORD" in out, out


# -- cancel, kill grace, timeout -------------------------------------------------------------------
async def test_a_canceled_handler_stops_the_step_within_the_grace_and_reports_canceled(h: Harness) -> None:
    fake = FakeRuntime()
    job_id, task, proc = await start(h, fake, fake_step(FAKE_SLEEP=30))
    sent = len(h.transport.sent)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert proc.term_at is not None and proc.killed_at is None  # it left on SIGTERM
    assert proc.exit_code == 143
    assert fake.methods(job_id) == ["prepare", "run_step", "cleanup"]
    marks = [s for s in h.transport.sent[sent:] if s.op.startswith("mark")]
    assert [(m.op, m.body["errorMessage"]) for m in marks] == [("markFailed", "canceled")]


async def test_a_step_that_ignores_sigterm_is_killed_after_the_grace(h: Harness) -> None:
    fake = FakeRuntime()
    job_id, task, proc = await start(h, fake, fake_step(FAKE_SLEEP=30, FAKE_IGNORE_TERM=1))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert proc.term_at is not None and proc.killed_at is not None
    assert GRACE * 0.9 <= proc.killed_at - proc.term_at < GRACE + 1.0
    assert proc.exit_code == 137
    assert fake.methods(job_id)[-1] == "cleanup"


async def test_a_step_slow_to_exit_gets_the_grace_but_no_more(h: Harness) -> None:
    fake = FakeRuntime()
    _job_id, task, proc = await start(h, fake, fake_step(FAKE_SLEEP=30, FAKE_TERM_DELAY=0.05))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert proc.killed_at is None and proc.exit_code == 143
    assert proc.ended_at is not None and 0.04 <= proc.ended_at - proc.term_at < GRACE


async def test_the_job_timeout_fails_the_job_after_stopping_the_step(h: Harness) -> None:
    fake = FakeRuntime()
    settings = h.executor_settings(maximum_runtime_per_job=0.3)
    job_id, view = await run(h, fake, fake_step(FAKE_SLEEP=30, FAKE_IGNORE_TERM=1), settings=settings)
    assert view["state"] == "failed", view
    assert view["error"] == "job exceeded maximum execution time of 0.3s"
    proc = fake.job(job_id).processes[0]
    assert proc.killed_at is not None and proc.killed_at - proc.term_at >= GRACE * 0.9  # grace honoured
    assert fake.methods(job_id)[-1] == "cleanup"
    assert view["outcome"] == "timeout"


# -- the server ------------------------------------------------------------------------------------
async def test_a_fenced_attempt_stops_and_touches_nothing_of_the_new_attempt(h: Harness) -> None:
    fake = FakeRuntime()
    # output that keeps coming, so the log is shipped after the server gave the job to someone else
    step = fake_step(FAKE_OUTPUT="x" * 400, FAKE_CHUNK=1, FAKE_CHUNK_DELAY=0.01, FAKE_SLEEP=30)
    job_id, task, proc = await start(h, fake, step)
    h.advance(h.settings.stalled_after + 1)  # no heartbeat (no worker): the resetter requeues the job
    view = await h.wait_for(job_id, "queued")
    assert view["attempt"] == 1
    with pytest.raises(asyncio.CancelledError):  # the handler stops itself on the server's 409
        await asyncio.wait_for(task, 5)
    fenced = [i for i, s in enumerate(h.transport.sent) if s.status == 409]
    assert fenced, h.transport.ops()
    after = h.transport.sent[fenced[0] :]
    assert all(s.status == 409 for s in after), [(s.op, s.status) for s in after]  # nothing more accepted
    assert proc.term_at is not None  # the step was stopped
    assert fake.methods(job_id)[-1] == "cleanup"
    view = await h.job(job_id)
    assert view["state"] == "queued" and view["error"] is None  # the job awaits its next attempt


async def test_a_5xx_is_retried_until_the_server_answers(h: Harness) -> None:
    fake = FakeRuntime()
    h.transport.fail("markComplete", status=503, times=2)
    h.transport.fail("addExecutionLogEntry", status=502, times=1)
    _job_id, view = await run(h, fake, fake_step(FAKE_OUTPUT="ok"))
    assert view["state"] == "completed", view
    marks = [(s.op, s.status) for s in h.transport.sent if s.op == "markComplete"]
    assert marks == [("markComplete", 503), ("markComplete", 503), ("markComplete", 204)]


async def test_an_unreachable_server_errors_the_job_with_lost_contact(h: Harness) -> None:
    fake = FakeRuntime()
    h.transport.fail("addExecutionLogEntry", status=None)  # the log cannot be opened: no connection
    job_id, view = await run(h, fake, fake_step(), retry_for=0)
    assert view["state"] == "errored", view
    assert view["error"].startswith("lost contact with the server: cannot reach the server at"), view
    assert fake.methods(job_id)[-1] == "cleanup"


async def test_a_fenced_attempt_sends_no_more_log_after_the_first_409(h: Harness) -> None:
    fake = FakeRuntime()
    step = fake_step(FAKE_OUTPUT="x" * 400, FAKE_CHUNK=1, FAKE_CHUNK_DELAY=0.01, FAKE_SLEEP=30)
    job_id, task, _proc = await start(h, fake, step)
    h.advance(h.settings.stalled_after + 1)
    await h.wait_for(job_id, "queued")
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)
    ops = [(s.op, s.status) for s in h.transport.sent]
    first = ops.index(("appendExecutionLogEntry", 409))
    # no more log sends; only the one mark that says the executor gave the attempt up (refused too)
    assert ops[first + 1 :] == [("markFailed", 409)], ops


# -- seams found by review ---------------------------------------------------------------------------
class _WholeJob(FakeRuntime):
    """A whole-job runtime (as a VM or a pod): run_plan gets every step at once."""

    def __init__(self, crash_after_start: bool = False) -> None:
        super().__init__()
        self.crash_after_start = crash_after_start
        self.plans: list[int] = []

    async def run_plan(self, space, plan, sink) -> None:  # type: ignore[no-untyped-def]
        self.plans.append(plan.job_id)
        for step in plan.steps:
            out = await sink.started(step)
            if self.crash_after_start:
                raise RuntimeError("the VM crashed")
            await sink.finished(step, await self.run_step(space, step, out))


async def test_a_whole_job_runtime_runs_the_plan(h: Harness) -> None:
    rt = _WholeJob()
    job_id, view = await run(h, rt, fake_step(FAKE_OUTPUT="one"), fake_step(FAKE_EXIT=4), fake_step())
    assert rt.plans == [job_id]
    assert view["state"] == "failed" and view["error"] == "step.docker.1 failed with exit code 4", view
    entries = [(e["key"], e["exitCode"]) for e in (await h.logs(job_id))]
    assert entries == [("step.docker.0", 0), ("step.docker.1", 4)]


async def test_a_whole_job_runtime_that_breaks_mid_step_leaves_no_log_entry_open(h: Harness) -> None:
    job_id, view = await run(h, _WholeJob(crash_after_start=True), fake_step())
    assert view["state"] == "errored", view
    (entry,) = await h.logs(job_id)
    assert entry["exitCode"] == -1 and "the runtime stopped before this step finished" in entry["out"]


async def test_a_workspace_that_breaks_while_collecting_does_not_complete_the_job(h: Harness) -> None:
    from corral.executor.workspace import HostWorkspace

    class Broken(HostWorkspace):
        async def collect(self, space, plan):  # type: ignore[no-untyped-def]
            raise PermissionError(13, "Permission denied", str(space.root / "meta.git"))

    fake = FakeRuntime()
    handler = h.handler(fake)
    handler._workspace = Broken(fake, frontend_url="x", frontend_password="y", executor_name="n")
    job_id = await h.submit(fake_step(), outputs=["x.txt"])
    await handler.handle(await h.dequeue(handler.client))
    view = await h.job(job_id)
    assert view["state"] in ("errored", "queued") and "cannot collect the results" in view["error"], view


async def test_a_runtime_that_keeps_its_workspace_in_its_sandbox_supplies_it(h: Harness) -> None:
    """A pod or a VM clones and diffs inside: the handler then never touches the host workspace."""
    from corral.executor.workspace.base import Results

    calls: list[str] = []

    class InSandbox:
        async def prepare(self, space) -> None:  # type: ignore[no-untyped-def]
            calls.append("prepare")

        async def clone(self, space, plan, token, open_log) -> None:  # type: ignore[no-untyped-def]
            calls.append("clone")

        async def write_files(self, space, files) -> None:  # type: ignore[no-untyped-def]
            calls.append("write_files")

        async def write_scripts(self, space, scripts) -> None:  # type: ignore[no-untyped-def]
            calls.append("write_scripts")

        async def collect(self, space, plan):  # type: ignore[no-untyped-def]
            calls.append("collect")
            return Results(diff="diff --git a/x b/x\n", files={}, problems=())

        async def cleanup(self, space) -> None:  # type: ignore[no-untyped-def]
            calls.append("cleanup")

    class PodLike(FakeRuntime):
        def make_workspace(self, settings):  # type: ignore[no-untyped-def]
            return InSandbox()

    _job_id, view = await run(h, PodLike(), fake_step())
    assert view["state"] == "completed", view
    assert calls[0] == "prepare" and "write_scripts" in calls and calls[-1] == "cleanup", calls
    assert "collect" in calls
