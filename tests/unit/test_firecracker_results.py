"""How a step's `end` line from the guest becomes its result (runtime._result): the disk limit, the
OOM killer and the process limit each named, in that order of precedence."""

from __future__ import annotations

from pathlib import Path

from corral.errors import Reason
from corral.executor.runtimes.base import JobSpace, Limits, Step
from corral.executor.runtimes.firecracker.runtime import _result

STEP = Step("step.docker.0", "docker", 0, "corral/busybox:1", ("true",))
LIMITS = Limits(pids=40, disk_bytes=2 * 1024**3)
SPACE = JobSpace(1, "q", Path("/nonexistent"), Path("/nonexistent/ws"), limits=LIMITS)


def test_forks_refused_by_the_process_limit_are_named_with_the_limit() -> None:
    r = _result(STEP, 2, False, False, SPACE, refused=17)
    assert r.exit_code == 2 and r.reason is Reason.EXIT and not r.oom_killed
    limit = "process limit (40 processes, EXECUTOR_JOB_PIDS)"
    assert r.message == f"step.docker.0 hit the job's {limit}: 17 forks refused"
    ok = _result(STEP, 0, False, False, SPACE, refused=3)  # the step coped: it still succeeds, with the note
    assert ok.exit_code == 0 and "3 forks refused" in ok.message


def test_a_full_disk_and_an_oom_kill_come_before_the_process_limit() -> None:
    full = _result(STEP, 1, True, True, SPACE, refused=5)
    assert full.reason is Reason.DISK and full.message == "step.docker.0 filled the job's disk (2 GiB)"
    oom = _result(STEP, 0, True, False, SPACE, refused=5)
    assert oom.oom_killed and oom.exit_code == 137
    plain = _result(STEP, 3, False, False, SPACE)
    assert (plain.exit_code, plain.reason, plain.message) == (3, None, "")
