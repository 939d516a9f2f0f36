"""The shell sandbox's seccomp filter, per-job identities and kill grace, attacked from inside a real sandbox.

Every probe runs in a real bubblewrap sandbox (the `bwrap_available` fixture: fails in CI, skips
elsewhere). Without the filter these attacks succeed: ``unshare -Ur`` gives a user namespace with
mount rights, io_uring and the kernel keyring are reachable, and all jobs share one uid.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from corral.executor.identity import UidPool
from corral.executor.runtimes.base import JobSpace, Step, StepResult
from corral.executor.runtimes.registry import make_cli_runtime
from corral.executor.runtimes.shell import ShellRuntime
from corral.executor.runtimes.shell.seccomp import bpf_program
from corral.executor.settings import ExecutorSettings
from tests.integration.shellkit import sweep_cgroup_parent

pytestmark = [pytest.mark.bwrap, pytest.mark.usefixtures("bwrap_available")]

VM_PREFIX = f"seccomp-test-{os.getpid()}"
CGROUP_PARENT = f"corral-{VM_PREFIX}"  # what the registry derives from EXECUTOR_VM_PREFIX
PYTHON = f"{sys.base_prefix}/bin/python3"
STEP_TIMEOUT_S = 30.0
EPERM, ENOSYS = 1, 38
SIGSYS = 31

_job_ids = itertools.count(1)
SpaceFactory = Callable[..., JobSpace]

# x86_64 system call numbers, and arguments that would succeed (or fail harmlessly) without a filter.
PROBE = r"""
import ctypes, os, socket, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def call(nr, *args):
    ctypes.set_errno(0)
    args = [ctypes.c_char_p(a) if isinstance(a, bytes) else ctypes.c_long(a) for a in args]
    ret = libc.syscall(ctypes.c_long(nr), *args)
    if ret == 0 and nr == 56:  # an unfiltered clone() child: leave at once
        os._exit(0)
    return "ok" if ret >= 0 else str(ctypes.get_errno())
params = ctypes.create_string_buffer(120)  # struct io_uring_params
attr = ctypes.create_string_buffer(128)  # struct perf_event_attr: type 1 (software), cpu clock
attr[4] = 128  # size
bpf_attr = ctypes.create_string_buffer(128)
probes = {
    "io_uring_setup": (425, 4, ctypes.addressof(params)),
    "io_uring_enter": (426, 0, 0, 0, 0, 0, 0),
    "io_uring_register": (427, 0, 0, 0, 0),
    "perf_event_open": (298, ctypes.addressof(attr), 0, -1, -1, 0),
    "keyctl": (250, 0, -4, 0),  # KEYCTL_GET_KEYRING_ID of the user keyring
    "add_key": (248, b"user", b"corral-probe", b"value", 5, -4),
    "request_key": (249, b"user", b"corral-probe", 0, 0),
    "bpf": (321, 0, ctypes.addressof(bpf_attr), 128),  # BPF_MAP_CREATE
    "unshare": (272, 0x10000000),  # CLONE_NEWUSER
    "setns": (308, -1, 0),
    "clone_newuser": (56, 0x10000000 | 17, 0, 0, 0, 0),
    "mount": (165, b"none", b"/tmp", b"tmpfs", 0, 0),
    "umount2": (166, b"/tmp", 0),
    "pivot_root": (155, b"/tmp", b"/tmp"),
    "chroot": (161, b"/tmp"),
    "fsopen": (430, b"tmpfs", 0),
    "open_tree": (428, -100, b"/tmp", 0),
    "move_mount": (429, -1, b"", -1, b"", 0),
    "mount_setattr": (442, -1, b"", 0, 0, 0),
    "userfaultfd": (323, 0),
    "name_to_handle_at": (303, -100, b"/tmp", 0, 0, 0),
    "open_by_handle_at": (304, -100, 0, 0),
    "kcmp": (312, os.getpid(), os.getpid(), 0, 0, 0),
    "personality_exec": (135, 0x0400000),  # READ_IMPLIES_EXEC
    "socket_vsock": (41, 40, 1, 0),  # AF_VSOCK, SOCK_STREAM
    "syslog": (103, 10, 0, 0),
    "quotactl": (179, 0, 0, 0, 0),
    "kexec_load": (246, 0, 0, 0, 0),
    "init_module": (175, 0, 0, 0),
    "reboot": (169, 0, 0, 0, 0),
    "swapon": (167, b"/tmp", 0),
    "acct": (163, 0),
    "settimeofday": (164, 0, 0),
    "iopl": (172, 3),
    "uselib": (134, 0),
    "clone3": (435, 0, 0),
}
for name, (nr, *args) in probes.items():
    print(name, call(nr, *args), flush=True)
"""
ALLOWED_PROBE = r"""
import ctypes, os, subprocess, threading
libc = ctypes.CDLL(None, use_errno=True)
print("personality", libc.personality(ctypes.c_uint(0xFFFFFFFF)) >= 0)  # a query, as Docker allows
t = threading.Thread(target=lambda: None); t.start(); t.join()
print("thread ok")
child = subprocess.run(["sh", "-c", "echo child $(echo sub) | cat"], capture_output=True, text=True)
print(child.stdout.strip())
print("ptrace-self", libc.ptrace(0, 0, 0, 0) == 0 or ctypes.get_errno())
"""
X32_PROBE = r"""
import ctypes
print("x32", ctypes.CDLL(None).syscall(0x40000000 | 39), flush=True)  # getpid through the x32 ABI
"""
# int 0x80 (the 32-bit ABI) from a 64-bit process: mov eax, 20 (getpid); int 0x80; ret
INT80_PROBE = r"""
import ctypes, mmap
code = bytes.fromhex("b814000000cd80c3")
buf = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
buf.write(code)
addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
print("int80", ctypes.CFUNCTYPE(ctypes.c_long)(addr)(), flush=True)
"""


@pytest.fixture(scope="module", autouse=True)
def _remove_cgroup_parent() -> Iterator[None]:
    yield
    leftovers = sweep_cgroup_parent(CGROUP_PARENT)
    assert leftovers == [], f"tests left job cgroups behind: {leftovers}"


@pytest.fixture
def runtime() -> ShellRuntime:
    return ShellRuntime(cgroup_parent=CGROUP_PARENT, extra_ro_binds=[sys.base_prefix])


@pytest.fixture
def uids() -> UidPool:
    return UidPool(200_000, 265_535)


@pytest.fixture
async def make_space(tmp_path: Path, runtime: ShellRuntime, uids: UidPool) -> AsyncIterator[SpaceFactory]:
    """Prepared job spaces shaped like the handler's, each with its own uid from the pool."""
    spaces: list[JobSpace] = []

    async def make(**kwargs: object) -> JobSpace:
        job_id = next(_job_ids)
        root = tmp_path / f"job-{job_id}"
        root.mkdir(mode=0o700)
        (root / "workspace").mkdir()
        uid, gid = uids.acquire()
        space = JobSpace(
            job_id=job_id, queue="test", root=root, workspace=root / "workspace", uid=uid, gid=gid, **kwargs
        )  # type: ignore[arg-type]
        spaces.append(space)
        await runtime.prepare(space)
        return space

    yield make  # type: ignore[misc]
    for space in spaces:
        await runtime.cleanup(space)
        uids.release(space.uid)


def step(*argv: str, kind: str = "docker") -> Step:
    return Step(key=f"step.{kind}.0", kind=kind, index=0, image=None, argv=argv)


async def run(runtime: ShellRuntime, space: JobSpace, the_step: Step) -> tuple[StepResult, str]:
    chunks: list[bytes] = []
    result = await asyncio.wait_for(runtime.run_step(space, the_step, chunks.append), STEP_TIMEOUT_S)
    return result, b"".join(chunks).decode(errors="replace")


def results(out: str) -> dict[str, str]:
    return dict(line.split(" ", 1) for line in out.splitlines() if " " in line)


# ------------------------------------------------------------------------------------------- tests


def test_profile_is_compiled_once() -> None:
    program = bpf_program()
    assert program is bpf_program()
    assert len(program) % 8 == 0 and 0 < len(program) < 64 * 1024


async def test_unshare_user_namespace_refused(runtime: ShellRuntime, make_space: SpaceFactory) -> None:
    space = await make_space()
    script = "unshare -Ur true; echo rc=$?; unshare -Urm sh -c 'mount -t tmpfs none /tmp && echo mounted'"
    _, out = await run(runtime, space, step("sh", "-c", script))
    assert "rc=1" in out and "Operation not permitted" in out, out
    assert "mounted" not in out


async def test_dangerous_syscalls_return_eperm(runtime: ShellRuntime, make_space: SpaceFactory) -> None:
    space = await make_space()
    result, out = await run(runtime, space, step(PYTHON, "-c", PROBE))
    assert result.exit_code == 0, out
    got = results(out)
    expected = {name: str(EPERM) for name in got}
    expected["clone3"] = str(ENOSYS)  # so that glibc falls back to clone(), whose flags are checked
    assert got == expected
    assert len(got) == PROBE.count('": (')  # every probe ran (none killed the process)


async def test_ordinary_programs_still_work(runtime: ShellRuntime, make_space: SpaceFactory) -> None:
    space = await make_space()
    result, out = await run(runtime, space, step(PYTHON, "-c", ALLOWED_PROBE))
    assert result.exit_code == 0, out
    assert out.splitlines() == ["personality True", "thread ok", "child sub", "ptrace-self True"]
    script = "git init -q r && cd r && git -c user.name=a -c user.email=a@b commit -q --allow-empty -m x"
    script += " && echo git-ok"
    result, out = await run(runtime, space, step("sh", "-c", script))
    assert (result.exit_code, out.strip().splitlines()[-1]) == (0, "git-ok"), out


async def test_other_architectures_are_killed(runtime: ShellRuntime, make_space: SpaceFactory) -> None:
    space = await make_space()
    result, out = await run(runtime, space, step(PYTHON, "-c", INT80_PROBE))
    assert result.exit_code == 128 + SIGSYS, (result, out)  # no x86 (int 0x80) ABI
    assert "int80" not in out
    result, out = await run(runtime, space, step(PYTHON, "-c", X32_PROBE))
    assert result.exit_code == 128 + SIGSYS, (result, out)  # nor x32 (number | 0x40000000)
    assert "x32" not in out


async def test_each_job_has_its_own_uid_and_keyring(runtime: ShellRuntime, make_space: SpaceFactory) -> None:
    """Job A stores a key in its user keyring; job B (another job, running at the same time) looks for it."""
    store = (
        "import ctypes; libc = ctypes.CDLL(None, use_errno=True); import os\n"
        "r = libc.syscall(248, b'user', b'corral-shared', b'job-a-secret', 12, -4)\n"
        "print(os.getuid(), r, ctypes.get_errno())\n"
    )
    look = (
        "import ctypes; libc = ctypes.CDLL(None, use_errno=True); import os\n"
        "r = libc.syscall(250, 10, -4, b'user', b'corral-shared', 0)\n"  # KEYCTL_SEARCH
        "print(os.getuid(), r, ctypes.get_errno())\n"
    )
    a, b = await make_space(), await make_space()
    (res_a, out_a), (res_b, out_b) = await asyncio.gather(
        run(runtime, a, step(PYTHON, "-c", store)), run(runtime, b, step(PYTHON, "-c", look))
    )
    assert res_a.exit_code == 0 and res_b.exit_code == 0, (out_a, out_b)
    uid_a, ret_a, errno_a = out_a.split()
    uid_b, ret_b, errno_b = out_b.split()
    assert (int(uid_a), int(uid_b)) == (a.uid, b.uid) and a.uid != b.uid
    assert 200_000 <= int(uid_a) <= 265_535
    assert (ret_a, errno_a) == ("-1", str(EPERM))  # refused at add_key already
    assert (ret_b, errno_b) == ("-1", str(EPERM))


async def test_cli_steps_of_a_docker_executor_get_the_filter(tmp_path: Path, uids: UidPool) -> None:
    settings = ExecutorSettings.from_env(
        {
            "EXECUTOR_FRONTEND_URL": "http://127.0.0.1:3080",
            "EXECUTOR_FRONTEND_PASSWORD": "p" * 20,
            "EXECUTOR_QUEUE_NAME": "batches",
            "EXECUTOR_RUNTIME": "docker",
            "EXECUTOR_VM_PREFIX": VM_PREFIX,
        }
    )
    cli = make_cli_runtime(settings, SimpleNamespace(name="docker"))  # type: ignore[arg-type]
    assert isinstance(cli, ShellRuntime)
    root = tmp_path / "job"
    root.mkdir(mode=0o700)
    (root / "workspace").mkdir()
    uid, gid = uids.acquire()
    space = JobSpace(
        job_id=next(_job_ids), queue="t", root=root, workspace=root / "workspace", uid=uid, gid=gid
    )
    await cli.prepare(space)
    try:
        _, out = await run(cli, space, step("sh", "-c", "unshare -Ur true; echo rc=$?", kind="cli"))
        assert "rc=1" in out and "Operation not permitted" in out, out
    finally:
        await cli.cleanup(space)


async def test_cancel_runs_the_trap_within_the_grace_even_when_canceled_again(
    runtime: ShellRuntime, make_space: SpaceFactory
) -> None:
    """The worker cancels a job again each time the server repeats "cancel" (cancel watch, heartbeats):
    that must not cut the grace short and SIGKILL the step before its TERM trap has run."""
    space = await make_space(kill_grace=5.0)
    chunks: list[bytes] = []
    # The trap takes a while (it cleans up), so the repeated cancels arrive while it runs.
    script = "trap 'sleep 1; echo trapped; exit 3' TERM; echo started; sleep 100"
    task = asyncio.create_task(runtime.run_step(space, step("sh", "-c", script), chunks.append))
    deadline = time.monotonic() + 10
    while b"started" not in b"".join(chunks):
        assert time.monotonic() < deadline, b"".join(chunks)
        await asyncio.sleep(0.02)
    started = time.monotonic()
    task.cancel()
    for _ in range(5):  # repeated cancels while the grace runs
        await asyncio.sleep(0.1)
        task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < 5.0
    assert b"trapped" in b"".join(chunks), b"".join(chunks)
    assert runtime.cgroup(space).pids() == set()


async def test_repeated_cancel_still_kills_after_the_grace(
    runtime: ShellRuntime, make_space: SpaceFactory
) -> None:
    space = await make_space(kill_grace=1.0)
    chunks: list[bytes] = []
    task = asyncio.create_task(
        runtime.run_step(space, step("sh", "-c", "trap '' TERM; echo started; sleep 300"), chunks.append)
    )
    while b"started" not in b"".join(chunks):
        await asyncio.sleep(0.02)
    started = time.monotonic()
    for _ in range(20):
        task.cancel()
        await asyncio.sleep(0.1)
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)
    assert 0.9 <= time.monotonic() - started < 4.0
    assert runtime.cgroup(space).pids() == set()
