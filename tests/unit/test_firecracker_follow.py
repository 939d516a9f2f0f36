"""How the host follows a job VM's console (runtime._follow), with a fake VM (review R2): the control
lines carry the VM's nonce, which only init knows, but a step that broke the guest's kernel can read
it (init's memory) and forge lines. Forged lines may lie about the job's own steps, never more: each
step is started once, in order, and ended once; a line out of that order, or one whose numbers are
not numbers, fails the job as a broken VM (before: a malformed "end" raised ValueError, an executor
error, and every repeated "start" opened one more log entry on the server)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from corral.errors import Reason, RuntimeFailure
from corral.executor.runtimes.base import JobSpace, Limits, Step, StepResult
from corral.executor.runtimes.firecracker.console import Control, Output
from corral.executor.runtimes.firecracker.runtime import FirecrackerRuntime

STEPS = (
    Step("step.docker.0", "docker", 0, "corral/busybox:1", ("true",)),
    Step("step.docker.1", "docker", 1, "corral/busybox:1", ("true",)),
)
SPACE = JobSpace(1, "q", Path("/nonexistent"), Path("/nonexistent/ws"), limits=Limits())


class FakeVM:
    def __init__(self, events: list[str | bytes]) -> None:
        self._events = events
        self.boot_log = bytearray()

    async def events(self) -> AsyncIterator[Output | Control]:
        for e in self._events:
            yield Output(e) if isinstance(e, bytes) else Control(e)

    def keep_boot_log(self, data: bytes) -> None:
        self.boot_log += data

    async def wait(self) -> int:
        return 0

    def why(self) -> str:
        return "fake"


class Sink:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.output = b""

    async def started(self, step: Step):  # type: ignore[no-untyped-def]
        self.calls.append(f"started {step.index}")

        def write(data: bytes) -> None:
            self.output += data

        return write

    async def finished(self, step: Step, result: StepResult) -> None:
        self.calls.append(f"finished {step.index} {result.exit_code}")

    def open_log(self, key: str, command: list[str]):  # type: ignore[no-untyped-def]
        raise AssertionError("not used")


async def _follow(events: list[str | bytes]) -> Sink:
    sink = Sink()
    await FirecrackerRuntime._follow(None, FakeVM(events), STEPS, sink, SPACE)  # type: ignore[arg-type]
    return sink


async def test_the_protocol_in_order_reports_each_step_once() -> None:
    sink = await _follow(["start 0", b"hi", "end 0 0 0 0 0", "start 1", "end 1 0 0 0 0", "done"])
    assert sink.calls == ["started 0", "finished 0 0", "started 1", "finished 1 0"]
    assert sink.output == b"hi"


@pytest.mark.parametrize(
    "events",
    [
        ["start 0", "end 0 zero 0 0 0"],  # not a number
        ["start 0", "end 0 0 x"],
        ["start 0", "end 0 " + "9" * 5000 + " 0"],  # more digits than int() takes
        ["start 0", "start 0"],  # a second start of a running step
        ["start 0", "end 0 0 0 0 0", "start 0"],  # a finished step again
        ["start 1"],  # out of order
        ["start 0", "end 1 0 0 0 0"],  # the end of another step
        ["start 0", "end 0 0 0 0 0", "start 1", "end 1 0 0 0 0", "start 2"],  # no such step
    ],
)
async def test_a_control_line_out_of_protocol_fails_the_job_as_a_broken_vm(events: list[str | bytes]) -> None:
    with pytest.raises(RuntimeFailure) as err:
        await _follow(events)
    assert err.value.reason is Reason.SANDBOX and "control line" in err.value.message
