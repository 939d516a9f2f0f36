"""Integration tests of the shell runtime: real bubblewrap sandboxes and cgroup v1 limits.

They need root, bwrap, setpriv and cgroup v1 (the `bwrap_available` fixture: fail in CI, skip elsewhere).
Every test uses its own job cgroups under a parent unique to this test process, removed at the end.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from corral.errors import RuntimeFailure
from corral.executor import stopping
from corral.executor.network import NetworkPolicy
from corral.executor.runtimes.base import LABEL_JOB, JobSpace, Limits, Step, StepResult
from corral.executor.runtimes.shell import ShellRuntime
from corral.executor.runtimes.shell.cgroups import JobCgroup
from tests.integration.shellkit import sweep_cgroup_parent

pytestmark = [pytest.mark.bwrap, pytest.mark.usefixtures("bwrap_available")]

CGROUP_PARENT = f"corral-test-{os.getpid()}"
PYTHON = f"{sys.base_prefix}/bin/python3"  # bound read-only into the sandbox via extra_ro_binds
UID = 1000
MiB = 1024**2
STEP_TIMEOUT_S = 30.0  # seconds: no single step in this file may take longer

_job_ids = itertools.count(1)

SpaceFactory = Callable[..., JobSpace]


@pytest.fixture(scope="module", autouse=True)
def _remove_cgroup_parent() -> Iterator[None]:
    yield
    leftovers = sweep_cgroup_parent(CGROUP_PARENT)
    assert leftovers == [], f"tests left job cgroups behind: {leftovers}"


@pytest.fixture
def runtime() -> ShellRuntime:
    return ShellRuntime(cgroup_parent=CGROUP_PARENT, extra_ro_binds=[sys.base_prefix])


@pytest.fixture
async def make_space(tmp_path: Path, runtime: ShellRuntime) -> AsyncIterator[SpaceFactory]:
    """Build (and afterwards clean up) job spaces shaped like the handler's: root-owned 0700 root."""
    spaces: list[JobSpace] = []

    def make(**kwargs: object) -> JobSpace:
        job_id = next(_job_ids)
        root = tmp_path / f"job-{job_id}"
        root.mkdir(mode=0o700)
        workspace = root / "workspace"
        workspace.mkdir()
        space = JobSpace(job_id=job_id, queue="test", root=root, workspace=workspace, **kwargs)  # type: ignore[arg-type]
        spaces.append(space)
        return space

    yield make
    for space in spaces:
        await runtime.cleanup(space)


def step(*argv: str, dir: str = "", env: dict[str, str] | None = None, image: str | None = None) -> Step:
    return Step(key="step.cli.0", kind="cli", index=0, image=image, argv=argv, dir=dir, env=env or {})


async def run(runtime: ShellRuntime, space: JobSpace, the_step: Step) -> tuple[StepResult, bytes]:
    chunks: list[bytes] = []
    result = await asyncio.wait_for(runtime.run_step(space, the_step, chunks.append), STEP_TIMEOUT_S)
    return result, b"".join(chunks)


async def prepared(runtime: ShellRuntime, make_space: SpaceFactory, **kwargs: object) -> JobSpace:
    space = make_space(**kwargs)
    await runtime.prepare(space)
    return space


def status_fields(text: str) -> dict[str, str]:
    fields = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


async def wait_for_output(chunks: list[bytes], marker: bytes, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while marker not in b"".join(chunks):
        assert time.monotonic() < deadline, f"{marker!r} never appeared in {b''.join(chunks)!r}"
        await asyncio.sleep(0.02)


# ------------------------------------------------------------------------------------------- tests


async def test_check_finds_no_problems(runtime: ShellRuntime) -> None:
    assert await runtime.check() == []


async def test_check_reports_missing_tools() -> None:
    broken = ShellRuntime(
        bwrap="/nonexistent/bwrap", setpriv="/nonexistent/setpriv", extra_ro_binds=["/nope"]
    )
    problems = await broken.check()
    assert any("bubblewrap" in p for p in problems)
    assert any("setpriv" in p for p in problems)
    assert any("/nope" in p for p in problems)


async def test_step_runs_unprivileged_as_job_uid(runtime: ShellRuntime, make_space: SpaceFactory) -> None:
    space = await prepared(runtime, make_space)
    script = "id -u; id -g; id -G; hostname; cat /proc/self/status"
    # The image of a docker step is ignored: it runs on the host's /usr like any other.
    result, out = await run(runtime, space, step("sh", "-c", script, image="alpine:3"))
    assert result == StepResult(exit_code=0)
    lines = out.decode().splitlines()
    assert lines[:4] == [str(UID), str(UID), str(UID), "job"]
    status = status_fields(out.decode())
    assert status["Uid"].split() == [str(UID)] * 4
    assert status["Gid"].split() == [str(UID)] * 4
    for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert status[cap] == "0000000000000000", cap
    assert status["NoNewPrivs"] == "1"


async def test_environment_is_cleared(
    runtime: ShellRuntime, make_space: SpaceFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CORRAL_HOST_SECRET", "leak")
    space = await prepared(runtime, make_space)
    result, out = await run(runtime, space, step("env", env={"FOO": "bar baz"}))
    assert result.exit_code == 0
    env = dict(line.split("=", 1) for line in out.decode().splitlines())
    assert set(env) == {"PATH", "HOME", "USER", "PWD", "FOO"}
    assert env["HOME"] == "/tmp"
    assert env["PWD"] == "/data"
    assert env["FOO"] == "bar baz"
    assert "/usr/bin" in env["PATH"].split(":")


async def test_step_environment_never_appears_in_a_host_command_line(
    runtime: ShellRuntime, make_space: SpaceFactory
) -> None:
    """bwrap's command line stays in the host's process list (readable by every uid) for the whole
    step: the step's environment (a secret) travels as a file in the sandbox, not as arguments. Values
    with quotes, newlines and shell syntax arrive exactly."""
    value = "s3cret-argv-" + os.urandom(6).hex()
    tricky = 'it\'s "quoted" $(touch /tmp/pwned) `id` \\ \n second line; exit 3'
    space = await prepared(runtime, make_space)
    task = asyncio.create_task(
        run(
            runtime,
            space,
            step(
                "sh", "-c", 'printf "%s|" "$TOKEN" "$TRICKY"; sleep 2', env={"TOKEN": value, "TRICKY": tricky}
            ),
        )
    )
    seen: list[str] = []
    for _ in range(40):  # bounded: ~2 s of the step's run
        await asyncio.sleep(0.05)
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                try:
                    with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                        if value.encode() in f.read():
                            seen.append(entry.name)
                except OSError:
                    pass
    result, out = await task
    assert result.exit_code == 0, out
    assert out.decode() == f"{value}|{tricky}|"
    assert not seen, f"the step's environment was in the command line of pids {sorted(set(seen))}"


async def test_filesystem_is_read_only_except_workspace_and_tmp(
    runtime: ShellRuntime, make_space: SpaceFactory
) -> None:
    space = make_space()
    (space.workspace / "sub").mkdir()
    (space.workspace / "sub" / "from-handler.txt").write_text("hello\n")  # created as root
    await runtime.prepare(space)
    script = """
        for d in / /usr /etc /bin /var /root; do
            if touch "$d/probe" 2>/dev/null; then echo "$d rw"; else echo "$d ro"; fi
        done
        pwd
        echo more >> from-handler.txt && echo appended
        touch /data/created /tmp/t /var/tmp/t /dev/shm/t && echo writable
        test -e /etc/shadow && echo shadow-visible
        test -e /etc/passwd && echo passwd-visible
        echo "root:" $(ls /)
    """
    result, out = await run(runtime, space, step("sh", "-c", script, dir="sub"))
    assert result.exit_code == 0, out
    text = out.decode()
    for d in ("/", "/usr", "/etc", "/bin", "/var", "/root"):
        assert f"{d} ro" in text.splitlines()
    assert "/data/sub" in text.splitlines()
    assert "appended" in text and "writable" in text
    assert "shadow-visible" not in text and "passwd-visible" in text
    root_entries = next(line for line in text.splitlines() if line.startswith("root:")).split()[1:]
    assert "work" not in root_entries and "home" not in root_entries  # the rest of the host is hidden
    assert {"data", "usr", "etc", "tmp", "proc", "dev"} <= set(root_entries)
    # prepare() chowned what the handler put there; the step's files are owned by the job uid.
    for path in (space.workspace, space.workspace / "sub" / "from-handler.txt", space.workspace / "created"):
        assert (path.stat().st_uid, path.stat().st_gid) == (UID, UID), path
    assert (space.workspace / "sub" / "from-handler.txt").read_text() == "hello\nmore\n"


async def test_step_dir_cannot_leave_workspace(runtime: ShellRuntime, make_space: SpaceFactory) -> None:
    space = make_space()
    (space.workspace / "etc").mkdir()
    await runtime.prepare(space)
    result, out = await run(runtime, space, step("pwd", dir="../../etc"))
    assert (result.exit_code, out) == (0, b"/data/etc\n")
    result, out = await run(runtime, space, step("pwd", dir="missing"))
    assert result.exit_code != 0
    assert b"missing" in out


async def test_python_prefix_under_root_runs_via_extra_ro_binds(
    runtime: ShellRuntime, make_space: SpaceFactory
) -> None:
    space = await prepared(runtime, make_space)
    code = "import os, sys; print(os.getuid(), sys.prefix)"
    result, out = await run(runtime, space, step(PYTHON, "-c", code))
    assert result.exit_code == 0, out
    assert out.decode().split() == [str(UID), sys.base_prefix]
    if not sys.base_prefix.startswith("/usr/"):
        # Without the bind the prefix is simply not there.
        bare = ShellRuntime(cgroup_parent=CGROUP_PARENT)
        result, out = await run(bare, space, step(PYTHON, "-c", code))
        assert result.exit_code != 0


async def test_no_network_only_loopback(runtime: ShellRuntime, make_space: SpaceFactory) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        probe = (
            "import socket\n"
            "print(sorted(l.split(':')[0].strip() for l in open('/proc/net/dev').readlines()[2:]))\n"
            "try:\n"
            f"    socket.create_connection(('127.0.0.1', {port}), timeout=5).close()\n"
            "    print('connected')\n"
            "except OSError as exc:\n"
            "    print('failed', type(exc).__name__)\n"
        )
        isolated = await prepared(runtime, make_space)
        result, out = await run(runtime, isolated, step(PYTHON, "-c", probe))
        assert result.exit_code == 0, out
        assert out.decode().splitlines() == ["['lo']", "failed ConnectionRefusedError"]

        shared = await prepared(runtime, make_space, network=NetworkPolicy.open())
        result, out = await run(runtime, shared, step(PYTHON, "-c", probe))
        assert result.exit_code == 0, out
        assert out.decode().splitlines()[1] == "connected"


async def test_memory_limit_oom_kills(runtime: ShellRuntime, make_space: SpaceFactory) -> None:
    space = await prepared(runtime, make_space, limits=Limits(memory_bytes=64 * MiB))
    result, _ = await run(runtime, space, step(PYTHON, "-c", "print(len(b'x' * (16 << 20)))"))
    assert result == StepResult(exit_code=0, oom_killed=False)
    result, _ = await run(runtime, space, step(PYTHON, "-c", "x = b'x' * (256 << 20)"))
    assert result == StepResult(exit_code=137, oom_killed=True)


async def test_cpu_quota_limits_usage(runtime: ShellRuntime, make_space: SpaceFactory) -> None:
    space = await prepared(runtime, make_space, limits=Limits(cpus=0.5))
    spin = "timeout 2 sh -c 'while :; do :; done'"
    result, _ = await run(runtime, space, step("sh", "-c", f"{spin} & {spin} & wait"))
    assert result.exit_code == 0
    used_s = runtime.cgroup(space).cpu_usage_ns() / 1e9
    # Two spinners for 2 s: ~4 s of CPU unbounded on 2 cores (~2 s on one); 0.5 CPU gives ~1 s.
    assert 0.2 < used_s < 1.5, used_s


async def test_fork_bomb_stopped_by_pids_limit(runtime: ShellRuntime, make_space: SpaceFactory) -> None:
    space = await prepared(runtime, make_space, limits=Limits(pids=32))
    started = time.monotonic()
    result, out = await run(runtime, space, step("sh", "-c", "bomb() { bomb | bomb & }; bomb; sleep 1"))
    assert time.monotonic() - started < 15
    assert b"Cannot fork" in out
    assert runtime.cgroup(space).pids_max_hits() > 0
    assert runtime.cgroup(space).pids() == set()
    assert isinstance(result.exit_code, int)


async def test_exit_codes_follow_the_shell(runtime: ShellRuntime, make_space: SpaceFactory) -> None:
    space = await prepared(runtime, make_space)
    assert (await run(runtime, space, step("sh", "-c", "exit 3")))[0].exit_code == 3
    assert (await run(runtime, space, step("sh", "-c", "kill -KILL $$")))[0].exit_code == 137
    assert (await run(runtime, space, step("sh", "-c", "kill -TERM $$")))[0].exit_code == 143
    assert (await run(runtime, space, step("no-such-command")))[0].exit_code == 127


async def test_output_streams_as_produced(runtime: ShellRuntime, make_space: SpaceFactory) -> None:
    space = await prepared(runtime, make_space)
    calls: list[tuple[float, bytes]] = []
    result = await runtime.run_step(
        space,
        step("sh", "-c", "echo a; sleep 1; echo b >&2"),
        lambda chunk: calls.append((time.monotonic(), chunk)),
    )
    assert result.exit_code == 0
    assert [chunk for _, chunk in calls] == [b"a\n", b"b\n"]  # stderr comes through the same pipe
    assert calls[1][0] - calls[0][0] > 0.7


async def test_leftovers_killed_after_normal_end(runtime: ShellRuntime, make_space: SpaceFactory) -> None:
    space = await prepared(runtime, make_space)
    started = time.monotonic()
    result, out = await run(runtime, space, step("sh", "-c", "setsid sleep 300 >/dev/null 2>&1 & echo done"))
    assert result.exit_code == 0 and out == b"done\n"
    assert time.monotonic() - started < 5
    assert runtime.cgroup(space).pids() == set()


async def test_cancel_kills_everything_after_grace(runtime: ShellRuntime, make_space: SpaceFactory) -> None:
    grace = 1.0
    space = await prepared(runtime, make_space, kill_grace=grace)
    cgroup = runtime.cgroup(space)
    chunks: list[bytes] = []
    # Ignores SIGTERM (inherited by the sleeps), and leaves a daemonised process in its own session.
    script = "trap '' TERM; setsid sleep 300 & echo started; sleep 300"
    task = asyncio.create_task(runtime.run_step(space, step("sh", "-c", script), chunks.append))
    await wait_for_output(chunks, b"started")
    assert len(cgroup.pids()) >= 4  # bwrap, bwrap's init, sh, the sleeps
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    elapsed = time.monotonic() - started
    assert grace * 0.9 <= elapsed < grace + 2, elapsed
    assert cgroup.pids() == set()
    await runtime.cleanup(space)
    assert not any(path.exists() for path in cgroup.paths())
    await runtime.cleanup(space)  # idempotent


async def test_cancel_sends_sigterm_first(runtime: ShellRuntime, make_space: SpaceFactory) -> None:
    space = await prepared(runtime, make_space, kill_grace=10.0)
    chunks: list[bytes] = []
    script = "trap 'echo got-term; exit 3' TERM; echo started; sleep 300 & wait"
    task = asyncio.create_task(runtime.run_step(space, step("sh", "-c", script), chunks.append))
    await wait_for_output(chunks, b"started")
    started = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < 3  # ended on SIGTERM, long before the grace ran out
    assert b"got-term" in b"".join(chunks)
    assert runtime.cgroup(space).pids() == set()


GRACE_SCRIPT = (
    # printf spells its output differently from its command line
    "trap 'sleep 0.5; printf \"%s-%s\\n\" grace kept; exit 0' TERM; echo started; while :; do sleep 0.1; done"
)


async def test_cancel_says_why_and_keeps_the_output_of_the_grace(
    runtime: ShellRuntime, make_space: SpaceFactory
) -> None:
    space = await prepared(runtime, make_space, kill_grace=10.0)
    chunks: list[bytes] = []
    task = asyncio.create_task(runtime.run_step(space, step("sh", "-c", GRACE_SCRIPT), chunks.append))
    await wait_for_output(chunks, b"started")
    task.cancel("canceling: the server asked")
    with pytest.raises(asyncio.CancelledError):
        await task
    out = b"".join(chunks)
    note = b"[corral] canceling: the server asked: sending SIGTERM, then SIGKILL after 10s\n"
    assert out.startswith(b"started\n" + note), out
    assert out.endswith(b"grace-kept\n"), out  # (the shell may say "Terminated" of its sleep first)
    assert runtime.cgroup(space).pids() == set()


async def test_a_timeout_says_so_and_signals_every_process_group(
    runtime: ShellRuntime, make_space: SpaceFactory
) -> None:
    """The step's SIGTERM reaches processes in other sessions and process groups too (the whole
    cgroup is signalled, not only the step's main process): each reports it in the grace."""
    space = await prepared(runtime, make_space, kill_grace=30.0)
    chunks: list[bytes] = []
    child = "trap 'echo child-term; exit 0' TERM; while :; do sleep 0.1; done"
    # the main shell waits for its child in its own TERM trap, so the sandbox outlives the child's
    script = f"trap 'wait; exit 0' TERM; setsid sh -c \"{child}\" & printf 'no newline yet'; wait"
    with pytest.raises(TimeoutError):
        async with stopping.deadline(1):
            await runtime.run_step(space, step("sh", "-c", script), chunks.append)
    out = b"".join(chunks)
    note = b"[corral] timeout after 1s: sending SIGTERM, then SIGKILL after 30s\n"
    assert out.startswith(b"no newline yet\n" + note), out
    assert b"child-term\n" in out, out
    assert runtime.cgroup(space).pids() == set()


async def test_janitor_removes_orphans_only(runtime: ShellRuntime, make_space: SpaceFactory) -> None:
    orphan = await prepared(runtime, make_space)
    live = await prepared(runtime, make_space)
    chunks: list[bytes] = []
    task = asyncio.create_task(
        runtime.run_step(orphan, step("sh", "-c", "echo started; sleep 300"), chunks.append)
    )
    await wait_for_output(chunks, b"started")

    removed = await runtime.janitor({live.labels[LABEL_JOB]})

    assert removed == [orphan.name]
    assert not runtime.cgroup(orphan).exists()
    assert runtime.cgroup(live).exists()
    result = await asyncio.wait_for(task, STEP_TIMEOUT_S)  # its processes were killed
    assert result.exit_code == 137
    assert await runtime.janitor({live.labels[LABEL_JOB]}) == []


async def test_cleanup_is_idempotent_and_tolerates_missing(
    runtime: ShellRuntime, make_space: SpaceFactory
) -> None:
    never_prepared = make_space()
    await runtime.cleanup(never_prepared)
    space = await prepared(runtime, make_space)
    cgroup = runtime.cgroup(space)
    assert all(path.is_dir() for path in cgroup.paths())
    await runtime.cleanup(space)
    await runtime.cleanup(space)
    assert not cgroup.exists()
    result, _ = await run(runtime, space, step("true"))
    assert result.reason == "sandbox"  # no cgroups: refuses to run unconfined


def test_cgroup_limits_are_written() -> None:
    cgroup = JobCgroup(CGROUP_PARENT, "corral-test-limits")
    try:
        cgroup.create(Limits(cpus=1.5, memory_bytes=96 * MiB, pids=77))
        memory = cgroup.path("memory")
        assert int((memory / "memory.limit_in_bytes").read_text()) == 96 * MiB
        assert int((memory / "memory.memsw.limit_in_bytes").read_text()) == 96 * MiB
        assert int((cgroup.path("cpu") / "cpu.cfs_quota_us").read_text()) == 150_000
        assert (cgroup.path("pids") / "pids.max").read_text().strip() == "77"
        cgroup.create(Limits(cpus=0, memory_bytes=0, pids=0))  # unbounded, on existing groups
        assert int((memory / "memory.limit_in_bytes").read_text()) > 2**60
        assert int((memory / "memory.memsw.limit_in_bytes").read_text()) > 2**60
        assert int((cgroup.path("cpu") / "cpu.cfs_quota_us").read_text()) == -1
        assert (cgroup.path("pids") / "pids.max").read_text().strip() == "max"
    finally:
        asyncio.run(cgroup.remove())


async def test_tmpfs_mounts_are_capped_by_the_jobs_limits(
    runtime: ShellRuntime, make_space: SpaceFactory
) -> None:
    space = make_space(limits=Limits(cpus=1, memory_bytes=256 * 1024**2, pids=64, disk_bytes=32 * 1024**2))
    await runtime.prepare(space)
    script = (
        "grep -E ' /(tmp|var/tmp|dev/shm) ' /proc/mounts\n"
        "dd if=/dev/zero of=/dev/shm/f bs=1M count=64 || echo FULL"
    )
    result, out = await run(runtime, space, step("sh", "-c", script))
    text = out.decode()
    assert result.exit_code == 0, text
    for mount in ("/tmp", "/var/tmp", "/dev/shm"):
        assert (
            f" {mount} tmpfs " in text and "size=32768k" in text.split(f" {mount} tmpfs ")[1].split("\n")[0]
        ), text
    assert "FULL" in text


async def test_the_steps_environment_never_reaches_the_privileged_exec(
    runtime: ShellRuntime, make_space: SpaceFactory
) -> None:
    """bwrap execs setpriv as real root: an LD_PRELOAD (or LD_AUDIT, GCONV_PATH...) of the step's in
    that exec ran job code as uid 0 before the drop (core_pattern, then host root). The loader's debug
    output shows which programs saw the step's environment: only the step itself."""
    space = await prepared(runtime, make_space)
    result, out = await run(runtime, space, step("/usr/bin/true", env={"LD_DEBUG": "libs"}))
    text = out.decode()
    assert result.exit_code == 0, text
    assert "initialize program: /usr/bin/true" in text, text  # the step honours its env
    assert "setpriv" not in text and "initialize program: /usr/bin/env" not in text, text
    _result, out = await run(runtime, space, step("sh", "-c", "grep ' /proc/sys ' /proc/self/mounts"))
    assert " ro," in out.decode() or out.decode().split()[3].startswith("ro"), out


async def test_an_invalid_environment_name_is_refused(
    runtime: ShellRuntime, make_space: SpaceFactory
) -> None:
    space = await prepared(runtime, make_space)
    with pytest.raises(RuntimeFailure, match="invalid environment variable"):
        await run(runtime, space, step("true", env={"A=B": "x"}))
