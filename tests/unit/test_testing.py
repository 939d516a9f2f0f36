"""corral.testing: the FakeRuntime honours the Runtime Protocol, and adding a runtime is one
package plus one registry line (the fake, registered by one line, runs a job end to end)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import corral.testing
from corral.errors import ConfigError, RuntimeFailure
from corral.executor.runtimes.base import JobSpace, Step
from corral.executor.runtimes.registry import RUNTIMES, make_runtime
from corral.executor.settings import ExecutorSettings
from corral.testing import EXECUTOR_SECRET, FakeRuntime, Harness, fake_step

ENV = {
    "EXECUTOR_FRONTEND_URL": "http://corral.test",
    "EXECUTOR_FRONTEND_PASSWORD": EXECUTOR_SECRET,
    "EXECUTOR_QUEUE_NAME": "batches",
}


def space(tmp_path: Path, job_id: int = 1, grace: float = 0.1) -> JobSpace:
    root = tmp_path / f"job-{job_id}"
    return JobSpace(job_id=job_id, queue="batches", root=root, workspace=root / "ws", kill_grace=grace)


def step(**env: str) -> Step:
    return Step(key="step.docker.0", kind="docker", index=0, image="img:1", argv=("true",), env=env)


async def test_the_fake_registered_by_one_line_runs_a_job_end_to_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert "fake" in RUNTIMES
    monkeypatch.setenv("CORRAL_TESTING", "1")
    async with Harness(tmp_path) as h:
        settings = h.executor_settings()
        runtime = make_runtime(settings)
        assert isinstance(runtime, FakeRuntime) and runtime.name == "fake"
        async with h.running(h.worker(runtime, settings)):
            job_id = await h.submit(fake_step(FAKE_OUTPUT="from the registry"))
            view = await h.wait_for(job_id)
    assert view["state"] == "completed", view
    assert runtime.methods(job_id) == ["prepare", "run_step", "cleanup"]


def test_the_fake_is_never_the_default_and_says_it_is_for_tests() -> None:
    assert ExecutorSettings.from_env(ENV).runtime != "fake"
    assert "for tests" in (FakeRuntime.__doc__ or "")
    assert "Not for production" in (corral.testing.__doc__ or "")


def test_executor_runtime_fake_is_accepted_from_the_environment() -> None:
    assert ExecutorSettings.from_env({**ENV, "EXECUTOR_RUNTIME": "fake"}).runtime == "fake"


def test_all_is_complete_and_sorted() -> None:
    public = {
        n
        for n, v in vars(corral.testing).items()
        if not n.startswith("_") and getattr(v, "__module__", None) == "corral.testing"
    }
    assert public <= set(corral.testing.__all__)
    assert corral.testing.__all__ == sorted(corral.testing.__all__)


async def test_run_step_before_prepare_is_refused_and_cleanup_is_idempotent(tmp_path: Path) -> None:
    fake, sp = FakeRuntime(), space(tmp_path)
    with pytest.raises(RuntimeFailure, match="before prepare"):
        await fake.run_step(sp, step(), lambda _b: None)
    await fake.cleanup(sp)  # safe although prepare never ran
    await fake.prepare(sp)
    assert (await fake.run_step(sp, step(FAKE_EXIT="4"), lambda _b: None)).exit_code == 4
    await fake.cleanup(sp)
    await fake.cleanup(sp)
    assert fake.methods(1) == ["run_step", "cleanup", "prepare", "run_step", "cleanup", "cleanup"]


async def test_output_is_written_in_chunks_and_bad_numbers_name_the_variable(tmp_path: Path) -> None:
    fake, sp = FakeRuntime(), space(tmp_path)
    await fake.prepare(sp)
    chunks: list[bytes] = []
    await fake.run_step(sp, step(FAKE_OUTPUT="abcdefghij", FAKE_CHUNK="4"), chunks.append)
    assert chunks == [b"abcd", b"efgh", b"ij"]
    with pytest.raises(RuntimeFailure, match="FAKE_SLEEP='soon' is not a number"):
        await fake.run_step(sp, step(FAKE_SLEEP="soon"), chunks.append)


async def test_state_is_per_job_and_concurrent_steps_are_counted(tmp_path: Path) -> None:
    fake = FakeRuntime()
    a, b = space(tmp_path, 1), space(tmp_path, 2)
    await fake.prepare(a)
    await fake.prepare(b)
    await asyncio.gather(
        fake.run_step(a, step(FAKE_SLEEP="0.05"), lambda _b: None),
        fake.run_step(b, step(FAKE_SLEEP="0.05", FAKE_EXIT="1"), lambda _b: None),
    )
    assert fake.max_active == 2 and fake.active == 0
    assert [p.exit_code for p in fake.job(1).processes] == [0]
    assert [p.exit_code for p in fake.job(2).processes] == [1]


async def test_cancel_signals_then_kills_after_the_grace_and_re_raises(tmp_path: Path) -> None:
    fake, sp = FakeRuntime(), space(tmp_path, grace=0.1)
    await fake.prepare(sp)
    task = asyncio.create_task(
        fake.run_step(sp, step(FAKE_SLEEP="30", FAKE_IGNORE_TERM="1"), lambda _b: None)
    )
    proc = await fake.wait_step(1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert proc.killed_at is not None and 0.09 <= proc.killed_at - proc.term_at < 0.5
    assert proc.exit_code == 137 and not proc.running


async def test_a_second_cancel_during_the_grace_kills_at_once(tmp_path: Path) -> None:
    fake, sp = FakeRuntime(), space(tmp_path, grace=5.0)
    await fake.prepare(sp)
    task = asyncio.create_task(
        fake.run_step(sp, step(FAKE_SLEEP="30", FAKE_IGNORE_TERM="1"), lambda _b: None)
    )
    proc = await fake.wait_step(1)
    task.cancel()
    await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert proc.killed_at is not None and proc.killed_at - proc.term_at < 1.0


async def test_the_janitor_removes_only_jobs_not_live(tmp_path: Path) -> None:
    fake = FakeRuntime()
    kept, orphan, done = space(tmp_path, 1), space(tmp_path, 2), space(tmp_path, 3)
    for sp in (kept, orphan, done):
        await fake.prepare(sp)
    await fake.cleanup(done)
    assert await fake.janitor({"batches-1"}) == ["corral-batches-2"]
    assert await fake.janitor({"batches-1"}) == []  # gone already
    assert fake.job(1).live and not fake.job(2).live


async def test_check_reports_the_configured_problems() -> None:
    assert await FakeRuntime().check() == []
    assert await FakeRuntime(problems=["no engine"]).check() == ["no engine"]


def test_a_production_executor_refuses_the_fake_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CORRAL_TESTING", raising=False)
    settings = ExecutorSettings.from_env({**ENV, "EXECUTOR_RUNTIME": "fake"})
    with pytest.raises(ConfigError, match="EXECUTOR_RUNTIME=fake is the test suite's fake runtime"):
        make_runtime(settings)
