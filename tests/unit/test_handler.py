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
    entry, marker = await h.logs(job_id)  # the step's entry, then the server's retry marker
    assert entry["exitCode"] == -1 and "the runtime stopped before this step finished" in entry["out"]
    assert marker["key"] == "corral.attempt" and "attempt 1 errored" in marker["out"], marker


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


async def test_a_queue_that_is_not_a_name_never_becomes_a_host_path(h: Harness, caplog) -> None:
    """Defence in depth behind QueueClient.dequeue's check: the job root's queue part is
    [a-z0-9_-] only, so "batches/../../x" makes no directory outside EXECUTOR_WORKSPACE_ROOT and
    the job neither runs nor is reported under that queue (review of issue 11, queue_escape2.py)."""
    from corral.protocol import Job

    fake = FakeRuntime()
    settings = h.executor_settings(queues=["batches", "codeintel"], keep_workspaces=True)
    handler = h.handler(fake, settings)
    outside = h.data_dir / "outside"
    for queue in ["batches/" + "../" * 12 + str(outside).lstrip("/"), "..", "a.b", "Batches"]:
        job = Job.model_validate(
            {"id": 7, "queue": queue, "token": "T", "version": 2, "dockerSteps": [fake_step()]}
        )
        await handler.handle(job)
    assert not outside.exists() and not list(settings.workspace_root.iterdir())
    assert fake.attempts(7) == [] and not [s for s in h.transport.sent if "mark" in s.op]
    assert caplog.text.count("job 7: refusing to run it: queue ") == 4


# -- against a Sourcegraph frontend (tests/compat/sgfrontend.py, in-process) --------------------------
SG_URL = "http://sourcegraph.test"  # never resolved: requests go through the ASGI transport


def sourcegraph(**options):
    import httpx

    from corral.testing import EXECUTOR_SECRET, FaultyTransport
    from tests.compat.sgfrontend import Frontend

    sg = Frontend(EXECUTOR_SECRET, **options)
    return sg, FaultyTransport(httpx.ASGITransport(app=sg.app))


async def run_sg(h: Harness, fake: FakeRuntime, sg, transport, job, **overrides):
    """Enqueue `job` (an SgJob) at the stand-in, dequeue and handle it; returns the workspace root
    (kept: EXECUTOR_KEEP_WORKSPACES) and the stand-in's record of the job."""
    sg.enqueue(job)
    settings = h.executor_settings(
        **{"frontend_url": SG_URL, "queues": [job.queue], "keep_workspaces": True, **overrides}
    )
    handler = h.handler(fake, settings, transport=transport)
    await handler.handle(await h.dequeue(handler.client))
    roots = sorted(settings.workspace_root.glob(f"*.{job.queue}-{job.id}-*"))
    return (roots[-1] / "workspace" if roots else None), sg.job(job.queue, job.id)


async def test_a_sourcegraph_job_is_v2_and_binary_files_arrive_intact(h: Harness) -> None:
    from tests.compat.sgfrontend import SgFile, SgJob

    sg, transport = sourcegraph()
    job = SgJob(1, "batches", docker_steps=[fake_step()], files={"bin/x.dat": SgFile(b"\x00\xffA\n")})
    ws, record = await run_sg(h, FakeRuntime(), sg, transport, job)
    assert record.version == 2 and record.state == "completed", record
    assert (ws / "bin/x.dat").read_bytes() == b"\x00\xffA\n"


async def test_a_v1_job_writes_the_utf8_bytes_of_its_text_files(h: Harness) -> None:
    from tests.compat.sgfrontend import SgFile, SgJob

    sg, transport = sourcegraph(force_version1=True)  # a frontend older than 4.3
    text = "héllo ✓ 日本\n".encode()
    job = SgJob(
        1, "batches", docker_steps=[fake_step()], files={"t.txt": SgFile(text), "b": SgFile(b"\x00\xffA")}
    )
    ws, record = await run_sg(h, FakeRuntime(), sg, transport, job)
    assert record.version == 1 and record.state == "completed", record
    assert (ws / "t.txt").read_bytes() == text
    # what Go's json.Marshal made of the invalid UTF-8 (why the executor asks for v2 jobs)
    assert (ws / "b").read_bytes() == "\x00\ufffdA".encode()


def test_file_content_decodes_each_version_and_names_a_bad_file() -> None:
    from corral.errors import StepFailed
    from corral.executor.jobfiles import file_content
    from corral.protocol import VirtualMachineFile as F

    assert file_content("a", F(content="AP9BCg=="), 2) == b"\x00\xffA\n"
    assert file_content("a", F(content="h\u00e9"), 1) == "hé".encode()
    assert file_content("a", F(content="x\ud800y"), 1) == "x\ufffdy".encode()  # a lone surrogate, as Go
    assert file_content("a", F(), 2) == b""
    with pytest.raises(StepFailed, match=r"file a\.sh: its content is not base64"):
        file_content("a.sh", F(content="not base64!"), 2)


async def test_files_given_by_bucket_and_key_are_fetched_with_the_job_token(h: Harness) -> None:
    from tests.compat.sgfrontend import SgFile, SgJob

    sg, transport = sourcegraph()
    sg.files[("batch-changes", "spec-1/file-1")] = b"\x00remote \xff bytes"
    files = {
        "deep/remote.bin": SgFile(bucket="batch-changes", key="spec-1/file-1"),
        "inline.txt": SgFile(b"inline"),
    }
    ws, record = await run_sg(
        h, FakeRuntime(), sg, transport, SgJob(9, "batches", docker_steps=[fake_step()], files=files)
    )
    assert record.state == "completed", record
    assert (ws / "deep/remote.bin").read_bytes() == b"\x00remote \xff bytes"
    assert (ws / "inline.txt").read_bytes() == b"inline"
    (get,) = sg.recorded("/.executors/files/batch-changes/spec-1/file-1")
    assert not sg.tokens  # the job token was deleted when the job was marked
    assert get.method == "GET" and get.headers["authorization"].startswith("Bearer ")
    assert get.headers["x-sourcegraph-job-id"] == "9" and get.headers["x-sourcegraph-executor-name"]


async def test_a_fetched_file_over_its_bound_fails_the_job_and_a_missing_one_errors_it(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    from corral.executor import jobfiles
    from tests.compat.sgfrontend import SgFile, SgJob

    sg, transport = sourcegraph()
    sg.files[("batch-changes", "s/big")] = b"x" * 100
    monkeypatch.setattr(jobfiles, "MAX_FETCHED_FILE", 10)
    big = SgJob(
        1, "batches", docker_steps=[fake_step()], files={"big": SgFile(bucket="batch-changes", key="s/big")}
    )
    _ws, record = await run_sg(h, FakeRuntime(), sg, transport, big)
    assert record.state == "failed" and "larger than 10 bytes" in record.failure, record
    gone = SgJob(
        2, "batches", docker_steps=[fake_step()], files={"f": SgFile(bucket="batch-changes", key="s/gone")}
    )
    _ws, record = await run_sg(h, FakeRuntime(), sg, transport, gone)
    assert record.state == "errored", record
    assert (
        "fetching batch-changes/s/gone from the files API failed" in record.failure
        and "404" in record.failure
    )


@pytest.mark.parametrize(
    ("bucket", "key", "problem"),
    [
        ("../queue", "x/y", "is not a valid bucket name"),
        ("batch-changes", "a/../../queue", "is not a valid files-API key"),
    ],
)
async def test_a_bucket_or_key_that_could_change_the_url_fails_the_job(
    h: Harness, bucket: str, key: str, problem: str
) -> None:
    from tests.compat.sgfrontend import SgFile, SgJob

    sg, transport = sourcegraph()
    job = SgJob(1, "batches", docker_steps=[fake_step()], files={"f": SgFile(bucket=bucket, key=key)})
    _ws, record = await run_sg(h, FakeRuntime(), sg, transport, job)
    assert record.state == "failed" and problem in record.failure, record
    assert not sg.recorded("/f") and not [r for r in sg.requests if "/files/" in r.path]


# -- skip.json (Sourcegraph's batch changes step skipping) ------------------------------------------
def keyed(key: str, **env) -> dict:
    return {**fake_step(**env), "key": key}


async def test_skip_json_after_a_pre_step_skips_to_the_step_it_names(h: Harness) -> None:
    fake = FakeRuntime()
    job_id, view = await run(
        h,
        fake,
        keyed("step.0.pre", FAKE_WRITE='skip.json={"nextStep": "step.2.pre"}'),
        keyed("step.0.run"),
        keyed("step.0.post"),
        keyed("step.1.pre"),
        keyed("step.2.pre"),
        keyed("step.2.run"),
    )
    assert view["state"] == "completed", view
    assert fake.steps(job_id) == [
        "step.docker.step.0.pre",
        "step.docker.step.2.pre",
        "step.docker.step.2.run",
    ]
    assert view["exitCodes"] == [0, 0, 0]
    assert [e["key"] for e in await h.logs(job_id)] == fake.steps(job_id)


async def test_skip_json_is_read_only_after_pre_steps_and_removed(h: Harness) -> None:
    fake = FakeRuntime()
    settings = h.executor_settings(keep_workspaces=True)
    job_id, view = await run(
        h,
        fake,
        keyed("step.0.run", FAKE_WRITE='skip.json={"nextStep": "step.1.post"}'),  # not a .pre step
        keyed("step.1.pre"),  # reads (and removes) the file the run step left
        keyed("step.1.run"),
        keyed("step.1.post"),
        settings=settings,
    )
    assert view["state"] == "completed", view
    assert fake.steps(job_id) == [
        "step.docker.step.0.run",
        "step.docker.step.1.pre",
        "step.docker.step.1.post",
    ]
    assert not list(settings.workspace_root.glob("*/workspace/skip.json"))


async def test_a_skip_target_that_names_no_step_skips_the_rest_as_sourcegraph_does(h: Harness) -> None:
    fake = FakeRuntime()
    job_id, view = await run(
        h, fake, keyed("a.pre", FAKE_WRITE='skip.json={"nextStep": "nowhere"}'), keyed("b"), keyed("c")
    )
    assert view["state"] == "completed", view
    assert fake.steps(job_id) == ["step.docker.a.pre"]


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({"FAKE_WRITE": "skip.json=[1]"}, "unmarshalling skip file: a JSON list, not an object"),
        ({"FAKE_WRITE": "skip.json={not json"}, "unmarshalling skip file: not JSON"),
        ({"FAKE_WRITE": 'skip.json={"nextStep": 3}'}, "nextStep is a int, not a string"),
        ({"FAKE_LINK": "skip.json=/etc/passwd"}, "refusing to follow the symlink 'skip.json'"),
        ({"FAKE_WRITE": "skip.json/x=a directory"}, "not a regular file"),
        # review of issue 11 (skipjson.py): Go's decoder refuses NaN; a deep one raised RecursionError
        ({"FAKE_WRITE": 'skip.json={"nextStep": "step.0.run", "x": NaN}'}, "not JSON (NaN is not JSON"),
        ({"FAKE_WRITE": "skip.json=" + "[" * 30000 + "]" * 30000}, "not JSON (nested too deeply)"),
        ({"FAKE_WRITE": "skip.json=" + '{"a":' * 10000 + "1" + "}" * 10000}, "nested too deeply"),
    ],
)
async def test_a_hostile_skip_json_errors_the_job_clearly(h: Harness, env: dict, problem: str) -> None:
    """As Sourcegraph: NextStep's error is returned from Handle ("checking for skip file"), so the
    job is errored (retried), not failed."""
    fake = FakeRuntime()
    job_id, view = await run(h, fake, keyed("step.0.pre", **env), keyed("step.0.run"))
    assert view["state"] in ("errored", "queued"), view
    assert (
        view["error"].startswith("step.docker.step.0.pre: checking for skip.json: ")
        and problem in view["error"]
    ), view["error"][:300]
    assert fake.steps(job_id) == ["step.docker.step.0.pre"]


async def test_a_big_skip_json_is_refused_before_it_is_read(h: Harness) -> None:
    from corral.executor.plan import MAX_SKIP_FILE

    fake = FakeRuntime()
    big = '{"nextStep": "' + "x" * MAX_SKIP_FILE + '"}'
    _job_id, view = await run(h, fake, keyed("p.pre", FAKE_WRITE=f"skip.json={big}"), keyed("q"))
    assert view["state"] in ("errored", "queued") and f"larger than {MAX_SKIP_FILE} bytes" in view["error"], (
        view
    )


async def test_a_job_with_cli_steps_ignores_skip_json_as_sourcegraphs_legacy_path(h: Harness) -> None:
    fake = FakeRuntime()
    job_id, view = await run(
        h,
        fake,
        keyed("step.0.pre", FAKE_WRITE='skip.json={"nextStep": "step.9.pre"}'),
        keyed("step.0.run"),
        cliSteps=[{"command": ["batch-exec"]}],
    )
    assert view["state"] == "completed", view
    assert fake.steps(job_id) == ["step.docker.step.0.pre", "step.docker.step.0.run", "step.src.0"]


# -- which CLI runs CLI steps ----------------------------------------------------------------------
async def test_cli_steps_run_corrals_cli_against_corrals_server(h: Harness) -> None:
    fake = FakeRuntime()
    _job_id, view = await run(h, fake, cliSteps=[{"command": ["batch", "exec"]}])
    assert view["state"] == "completed", view
    (call,) = [c for c in fake.calls if c.method == "run_step"]
    assert call.argv == ("/bin/false", "batch", "exec")  # the harness's EXECUTOR_CLI_PATH


async def test_cli_steps_run_src_against_sourcegraph(
    h: Harness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.compat.sgfrontend import SgJob

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    src = bin_dir / "src"
    src.write_text("#!/bin/sh\necho 'Current version: 5.2.0'\n")
    src.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    sg, transport = sourcegraph()
    fake = FakeRuntime()
    job = SgJob(1, "batches", cli_steps=[{"command": ["batch-exec", "-f", "input.json"]}])
    _ws, record = await run_sg(h, fake, sg, transport, job)
    assert record.state == "completed", record
    (call,) = [c for c in fake.calls if c.method == "run_step"]
    assert call.argv == (str(src), "batch-exec", "-f", "input.json")


async def test_a_sourcegraph_job_with_cli_steps_fails_at_once_without_src(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.compat.sgfrontend import SgJob

    monkeypatch.setenv("PATH", "/nonexistent")
    sg, transport = sourcegraph()
    fake = FakeRuntime()
    job = SgJob(1, "batches", repository_name="acme/app", cli_steps=[{"command": ["batch-exec"]}])
    _ws, record = await run_sg(h, fake, sg, transport, job)
    assert record.state == "failed", record
    assert "src-cli is not installed" in record.failure and "EXECUTOR_SRC_CLI_PATH" in record.failure
    assert not [c for c in fake.calls if c.method in ("prepare", "run_step")]  # nothing ran, no clone
    assert not sg.recorded("/info/refs")
