"""The ``shell`` runtime: each step runs in a bubblewrap sandbox on the host, limited by cgroup v1.

Sandbox (per step): a read-only root built from parts (``/usr``, the usrmerge symlinks, a short list
of ``/etc`` entries bound one by one, `extra_ro_binds`), a fresh ``/dev``, ``/proc``, tmpfs ``/tmp``,
``/var/tmp`` and ``/dev/shm``, and the job workspace bound read-write at ``WORKSPACE_MOUNT``
(``/data``). New IPC, PID, UTS and cgroup namespaces always; a new network namespace (only ``lo``)
unless the job has a network (its NetworkPolicy): ``open`` shares the host's, ``deny-private`` runs
bwrap (via nsenter) in the job's namespace behind the egress firewall (`corral.executor.network.
egress`, made in prepare, removed in cleanup) with /etc/resolv.conf naming its one resolver. The
environment is cleared; the step sees PATH, HOME=/tmp, USER, PWD (set by bwrap's --chdir) and ``step.env``.

Privileges, and why bwrap runs as root: the step must run as ``space.uid``/``space.gid`` with no
capabilities. Running ``setpriv --reuid U ... bwrap`` (unprivileged bwrap in a user namespace)
cannot bind anything the uid cannot reach: the workspace lives in the job root (root-owned, 0700)
and `extra_ro_binds` such as ``/root/.pyenv/versions/3.11.7`` sit under ``/root`` (0700). And
``bwrap --unshare-user --uid U`` as root maps U to host root. So bwrap runs as real root *without*
a user namespace (hence not ``--unshare-all``, which would add one), keeps only CAP_SETUID,
CAP_SETGID and CAP_SETPCAP, builds the mounts, and execs ``/usr/bin/setpriv`` *inside* the sandbox,
which sets the uid/gid, clears supplementary groups, empties the inheritable and bounding sets, sets
no_new_privs and execs the step. No step code ever runs with privileges: CapEff/CapPrm/CapBnd are 0
and NoNewPrivs is 1. Parent directories of binds are created 0755 (``--perms``) so the uid can
traverse e.g. ``/root`` inside the sandbox, where it holds nothing but the bound path.

System calls: bwrap installs the seccomp filter of `seccomp` (``--seccomp FD``, a memfd per step
holding the BPF compiled once per executor) right before it executes setpriv, so every process of
the step runs under it: Docker's default profile for an unprivileged container, tightened (no user
namespaces or mounts, no keyring, io_uring, bpf, perf_event_open; only the native ABI); see that
module for the list and why. Each job runs as its own uid (``space.uid``, from
`corral.executor.identity`), so no uid-wide kernel state (keyring, signals, ptrace) joins two jobs.

Workspace ownership: `prepare` chowns ``space.workspace`` recursively (not following symlinks) to
``space.uid:space.gid``, so files the handler put there are writable by the step, and files the step
creates are owned by that uid on the host.

Limits: `prepare` creates the job's cgroups (see `cgroups`); the bwrap process joins them in
``preexec_fn`` (between fork and exec, with nothing but ``os.open``/``os.write``, so it is safe even
with threads), so every process of the step, however daemonised, is in them. ``oom_killed`` is true
when ``memory.oom_control``'s ``oom_kill`` counter grew during the step.

Ending: when the step's main process exits, bwrap's PID 1 exits and the kernel kills the rest of the
PID namespace; a freezer sweep then removes anything still in the cgroup. On cancellation (a cancel,
the job's deadline) the log first says why (`corral.executor.stopping`), then every process of the
step gets SIGTERM at once, the whole cgroup and so every process group and session the step made
(bwrap's own outer process is spared, as killing it would SIGKILL the sandbox at once), then after at
most ``space.kill_grace`` seconds everything in the cgroup gets SIGKILL; output written in the grace
is read to its end and kept. The
grace survives further cancellations of the task (the worker repeats a cancel whenever the server
repeats it); before, the second cancel SIGKILLed the step at once and its TERM trap never ran.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import posixpath
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from corral.errors import CgroupError, Reason, RuntimeFailure
from corral.executor import safefs, stopping
from corral.executor.network import egress, netns
from corral.executor.runtimes.base import (
    LABEL_JOB,
    SCRIPTS_MOUNT,
    WORKSPACE_MOUNT,
    JobSpace,
    OutputSink,
    Runtime,
    Step,
    StepResult,
)
from corral.executor.runtimes.shell import seccomp
from corral.executor.runtimes.shell.cgroups import (
    CGROUP_ROOT,
    NAME_PREFIX,
    JobCgroup,
    job_cgroup_names,
    missing_controllers,
)
from corral.executor.runtimes.shell.settings import ShellSettings

__all__ = ["DEFAULT_ETC_FILES", "ShellRuntime"]

log = logging.getLogger(__name__)

READ_CHUNK_BYTES = 64 * 1024  # bytes: the most one output() call carries
DRAIN_TIMEOUT_S = 2.0  # seconds to wait for the output pipe to reach EOF once every process is dead
PROBE_TIMEOUT_S = 10.0  # seconds: the sandbox smoke test in check()
SANDBOX_HOSTNAME = "job"
SANDBOX_HOME = "/tmp"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
NSENTER = "/usr/bin/nsenter"  # util-linux: enters the job's network namespace, then execs bwrap
FALLBACK_USER = "job"  # USER when space.uid has no passwd entry
# The step's environment travels as a file bwrap writes into the sandbox (--ro-bind-data from a memfd),
# never as arguments: bwrap's command line stays visible in the host's process list (to every uid, and
# to execve auditing) for the whole step. Only the sandbox's own mount namespace holds the file.
ENV_FILE = "/run/corral-env"
# After setpriv, as the job's user: enters the step's directory, takes the step's environment (in a
# shell with nothing but PATH: bwrap --clearenv; cd's OLDPWD unset), execs the step: $1 is the directory,
# the rest the step's argv. A missing directory fails the step (126), as bwrap's --chdir did.
STEP_SHIM = f'cd -- "$1" || exit 126; unset OLDPWD; . {ENV_FILE} || exit 126; shift; exec "$@"'
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def env_file(env: Mapping[str, str]) -> bytes:
    """`env` as POSIX shell exports, every value single-quoted (a quote as '\\''): sourced by STEP_SHIM."""
    lines = []
    for key, value in env.items():
        quoted = "'" + value.replace("'", "'\\''") + "'"
        lines.append(f"export {key}={quoted}\n")
    return "".join(lines).encode("utf-8", "surrogateescape")


@contextlib.contextmanager
def env_fd(env: Mapping[str, str]) -> Iterator[int]:
    """A memfd holding env_file(env), at offset 0, for bwrap's --ro-bind-data."""
    fd = os.memfd_create("corral-step-env", os.MFD_CLOEXEC)
    try:
        data = memoryview(env_file(env))
        while data:
            data = data[os.write(fd, data) :]
        os.lseek(fd, 0, os.SEEK_SET)
        yield fd
    finally:
        os.close(fd)


# Entries of the host /etc bound read-only one by one (skipped when missing). Deliberately not the
# whole /etc (docker keys, shadow, pip/npm credentials, ...).
DEFAULT_ETC_FILES: tuple[str, ...] = (
    "passwd",
    "group",
    "hosts",
    "resolv.conf",
    "nsswitch.conf",
    "host.conf",
    "gai.conf",
    "protocols",
    "services",
    "networks",
    "ssl",
    "ca-certificates",
    "ca-certificates.conf",
    "alternatives",
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "localtime",
    "timezone",
    "os-release",
    "debian_version",
    "mime.types",
    "magic",
    "shells",
    "login.defs",
    "profile",
    "bash.bashrc",
    "inputrc",
)
USRMERGE_LINKS: tuple[str, ...] = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
# What bwrap itself keeps before setpriv drops to the uid (setpriv needs exactly these).
SETPRIV_CAPS: tuple[str, ...] = ("CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP")


def _join_cgroups(procs_files: Sequence[bytes]) -> None:
    """preexec_fn: move the forked child (soon bwrap) into the job's cgroups. Only raw syscalls."""
    pid = str(os.getpid()).encode()
    for path in procs_files:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.write(fd, pid)
        finally:
            os.close(fd)


def _exit_code(returncode: int) -> int:
    """Shell convention: killed by signal N -> 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


async def _pump(stream: asyncio.StreamReader, output: OutputSink) -> None:
    while chunk := await stream.read(READ_CHUNK_BYTES):
        output(chunk)


class ShellRuntime:
    """Runs steps directly on the host in bubblewrap + cgroup v1 sandboxes (root required)."""

    name: ClassVar[str] = "shell"

    def __init__(
        self,
        *,
        cgroup_parent: str = "corral",
        extra_ro_binds: Sequence[str | os.PathLike[str]] = (),
        extra_path: Sequence[str] = (),
        etc_files: Sequence[str] = DEFAULT_ETC_FILES,
        bwrap: str = "bwrap",
        setpriv: str = "/usr/bin/setpriv",
        cgroup_root: Path = CGROUP_ROOT,
    ) -> None:
        """
        cgroup_parent: cgroup directory (in every controller) that holds the job groups.
        extra_ro_binds: absolute host paths bound read-only at the same path (e.g. a Python prefix and
            a venv, so a CLI step can run ``corral``). Paths under ``/usr`` are visible already.
        extra_path: directories (as seen in the sandbox) put in front of the default PATH.
        etc_files: names of entries of the host ``/etc`` bound read-only (missing ones are skipped).
        bwrap: the bubblewrap binary on the host.
        setpriv: the setpriv binary *as seen inside the sandbox* (so under /usr or an extra bind).
        """
        self.cgroup_parent = cgroup_parent.strip("/")
        self.extra_ro_binds: tuple[str, ...] = tuple(os.path.normpath(os.fspath(p)) for p in extra_ro_binds)
        self.extra_path = tuple(extra_path)
        self.etc_files = tuple(etc_files)
        self.bwrap = bwrap
        self.setpriv = setpriv
        self.cgroup_root = cgroup_root

    # ----------------------------------------------------------------------------------- helpers

    def cgroup(self, space: JobSpace) -> JobCgroup:
        """The job's cgroups; their name is `space.name`, i.e. ``corral-`` + the job label."""
        label = space.labels[LABEL_JOB]
        if space.name != NAME_PREFIX + label:
            raise ValueError(f"job name {space.name!r} does not carry its label {label!r}")
        return JobCgroup(self.cgroup_parent, space.name, self.cgroup_root)

    @staticmethod
    def _netns(space: JobSpace) -> str:
        return netns.job_netns_name(space.owner, space.labels[LABEL_JOB])

    def build_argv(self, space: JobSpace, step: Step, seccomp_fd: int, env: int) -> list[str]:
        """The full host command line of one step: bwrap ... -- setpriv ... -- step.argv.

        seccomp_fd: a descriptor holding the compiled filter (`seccomp.program_fd`), passed to bwrap.
        env: a descriptor holding the step's environment (`env_fd(self.environment(space, step))`).
        """
        filtered = space.network.filtered
        args: list[str] = []
        if filtered:  # the job's namespace behind the egress firewall (made in prepare)
            args += [NSENTER, f"--net={netns.path(self._netns(space))}", "--"]
        args += [self.bwrap, "--die-with-parent", "--new-session"]
        args += ["--unshare-ipc", "--unshare-pid", "--unshare-uts", "--unshare-cgroup-try"]
        if not space.network.has_interface and not filtered:
            args.append("--unshare-net")
        args += ["--hostname", SANDBOX_HOSTNAME, "--cap-drop", "ALL"]
        for cap in SETPRIV_CAPS:
            args += ["--cap-add", cap]

        # Root file system, read-only: /usr, the usrmerge links, selected /etc entries.
        args += ["--ro-bind", "/usr", "/usr"]
        for name in USRMERGE_LINKS:
            host = "/" + name
            if os.path.islink(host):
                args += ["--symlink", os.readlink(host), host]
            elif os.path.isdir(host):
                args += ["--ro-bind", host, host]
        args += ["--perms", "0755", "--dir", "/etc"]
        for name in self.etc_files:
            if not (filtered and name == "resolv.conf"):
                args += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
        if filtered:  # the namespace's one resolver: slirp4netns' DNS forwarder
            args += ["--ro-bind", os.fspath(egress.resolv_conf(space.root)), "/etc/resolv.conf"]
        # tmpfs pages are charged to the job's memory cgroup; each is also capped at the smaller of the
        # job's memory and disk limits, as the docker runtime caps its /tmp.
        caps = [b for b in (space.limits.memory_bytes, space.limits.disk_bytes) if b > 0]
        size = ["--size", str(min(caps))] if caps else []
        args += ["--dev", "/dev", "--perms", "1777", *size, "--tmpfs", "/dev/shm", "--proc", "/proc"]
        # sysctls and the kernel's triggers read-only (as Docker has them): never writable from a job
        args += [
            "--ro-bind",
            "/proc/sys",
            "/proc/sys",
            "--ro-bind-try",
            "/proc/sysrq-trigger",
            "/proc/sysrq-trigger",
        ]
        args += ["--perms", "1777", *size, "--tmpfs", "/tmp"]
        args += ["--perms", "0755", "--dir", "/var", "--perms", "1777", *size, "--tmpfs", "/var/tmp"]

        made = {"/", "/etc", "/var", "/tmp", "/var/tmp"}
        for path in self.extra_ro_binds:
            if path == "/usr" or path.startswith("/usr/"):
                continue  # already visible, and /usr is read-only so nothing can be mounted in it
            parents: list[str] = []
            parent = posixpath.dirname(path)
            while parent not in made:
                parents.append(parent)
                parent = posixpath.dirname(parent)
            for directory in reversed(parents):
                args += ["--perms", "0755", "--dir", directory]
                made.add(directory)
            args += ["--ro-bind", path, path]

        args += ["--bind", os.fspath(space.workspace), WORKSPACE_MOUNT]
        args += ["--ro-bind-try", os.fspath(space.scripts), SCRIPTS_MOUNT]
        for host_path, sandbox_path in step.binds:
            args += ["--bind", host_path, sandbox_path]
        # bwrap's own --chdir runs as root, before setpriv, while bwrap still holds a descriptor of the
        # host's /proc: a job-made symlink `dir -> /proc/self/fd/3` put the step's cwd on the host.
        # So bwrap only enters /data (ours); the step's dir is entered by CHDIR_SHIM after setpriv,
        # as the job's uid, inside the sandbox, where a symlink leads only where the job could go.
        args += ["--chdir", WORKSPACE_MOUNT]

        # The step's environment is set by STEP_SHIM *after* setpriv dropped to the job's uid: bwrap execs
        # setpriv as real root, so anything of the job's in that exec's environment (LD_PRELOAD,
        # LD_LIBRARY_PATH, LD_AUDIT, GCONV_PATH...) ran job code as uid 0 before the drop.
        args += ["--clearenv", "--setenv", "PATH", DEFAULT_PATH]
        args += ["--perms", "0755", "--dir", "/run", "--perms", "0444", "--ro-bind-data", str(env), ENV_FILE]
        args += ["--remount-ro", "/"]
        args += ["--seccomp", str(seccomp_fd)]  # installed right before setpriv runs: binds the step

        args += [
            "--",
            self.setpriv,
            f"--reuid={space.uid}",
            f"--regid={space.gid}",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--no-new-privs",
            "--pdeathsig=keep",
            "--",
            "/bin/sh",
            "-c",
            STEP_SHIM,
            "corral-step",
            self._step_dir(step),
            *step.argv,
        ]
        return args

    @staticmethod
    def _step_dir(step: Step) -> str:
        """step.dir (relative to the workspace) as seen in the sandbox, entered from inside it."""
        rel = posixpath.normpath("/" + step.dir).lstrip("/")  # cannot climb out of the workspace
        return posixpath.join(WORKSPACE_MOUNT, rel) if rel else WORKSPACE_MOUNT

    def environment(self, space: JobSpace, step: Step) -> dict[str, str]:
        """The step's whole environment. Names must be shell names ([A-Za-z_][A-Za-z0-9_]*): the
        sandbox's shell sets them (see STEP_SHIM); RuntimeFailure (reason sandbox) otherwise."""
        for key, value in step.env.items():
            if not _ENV_NAME.fullmatch(key) or "\0" in value:
                raise RuntimeFailure(
                    f"step {step.key}: invalid environment variable {key[:100]!r} (the shell runtime takes "
                    "names of letters, digits and '_', not starting with a digit; values without NUL)",
                    reason=Reason.SANDBOX,
                )
        try:
            user = pwd.getpwuid(space.uid).pw_name
        except KeyError:
            user = FALLBACK_USER
        path = ":".join((*self.extra_path, DEFAULT_PATH))
        rel = posixpath.normpath("/" + step.dir).lstrip("/")
        pwd_ = posixpath.join(WORKSPACE_MOUNT, rel) if rel else WORKSPACE_MOUNT
        return {"PATH": path, "HOME": SANDBOX_HOME, "USER": user, "PWD": pwd_, **step.env}

    # -------------------------------------------------------------------------------- protocol

    async def check(self) -> list[str]:
        problems: list[str] = []
        if os.geteuid() != 0:
            problems.append("the shell runtime must run as root (it builds sandboxes and cgroups)")
        if not shutil.which(self.bwrap):
            problems.append(f"bubblewrap ({self.bwrap}) is not installed: apt-get install bubblewrap")
        if not os.access(self.setpriv, os.X_OK):
            problems.append(f"setpriv ({self.setpriv}) is missing: it comes with util-linux")
        for controller in missing_controllers(self.cgroup_root):
            problems.append(
                f"the cgroup v1 '{controller}' controller is not mounted at {self.cgroup_root / controller}"
            )
        if (self.cgroup_root / "memory").is_dir() and not (
            self.cgroup_root / "memory" / "memory.memsw.limit_in_bytes"
        ).exists():
            problems.append("swap accounting is off (no memory.memsw.*): boot with swapaccount=1")
        for path in self.extra_ro_binds:
            if not os.path.isabs(path):
                problems.append(f"extra read-only bind {path!r} is not an absolute path")
            elif not os.path.exists(path):
                problems.append(f"extra read-only bind {path} does not exist")
        if not problems:
            problems += await self._probe()
        return problems

    async def _probe(self) -> list[str]:
        """Run ``true`` in a real sandbox (without cgroups) to catch what static checks cannot."""
        with tempfile.TemporaryDirectory(prefix="corral-probe-") as tmp:
            workspace = Path(tmp) / "workspace"
            workspace.mkdir()
            space = JobSpace(job_id=0, queue="probe", root=Path(tmp), workspace=workspace)
            step = Step(key="probe", kind="cli", index=0, image=None, argv=("true",))
            try:
                with seccomp.program_fd() as fd, env_fd(self.environment(space, step)) as efd:
                    proc = await asyncio.create_subprocess_exec(
                        *self.build_argv(space, step, fd, efd),
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.STDOUT,
                        env={"PATH": DEFAULT_PATH},
                        pass_fds=(fd, efd),
                    )
            except seccomp.SeccompUnavailable as exc:
                return [str(exc)]
            except OSError as exc:
                return [f"cannot start a bubblewrap sandbox: {exc}"]
            try:
                out, _ = await asyncio.wait_for(proc.communicate(), PROBE_TIMEOUT_S)
            except TimeoutError:
                proc.kill()
                await proc.wait()
                return [f"a bubblewrap sandbox running `true` did not end within {PROBE_TIMEOUT_S:.0f} s"]
            if proc.returncode != 0:
                text = out.decode(errors="replace").strip()
                return [f"a bubblewrap sandbox fails to start (exit {proc.returncode}): {text}"]
        return []

    @classmethod
    def from_settings(
        cls, settings: ShellSettings, *, cgroup_parent: str, extra_ro_binds: Sequence[str] = ()
    ) -> ShellRuntime:
        return cls(
            cgroup_parent=cgroup_parent,
            extra_ro_binds=extra_ro_binds,
            bwrap=settings.bwrap,
            setpriv=settings.setpriv,
        )

    def telemetry(self) -> dict[str, str]:
        return {}

    async def prepare(self, space: JobSpace) -> None:
        """Create the job's cgroups with its limits, and hand the workspace to space.uid/space.gid.

        Raises RuntimeFailure (reason sandbox) when the cgroups or the workspace cannot be set up."""
        try:
            cgroup = self.cgroup(space)
            cgroup.create(space.limits)
            space.workspace.mkdir(parents=True, exist_ok=True)
            await asyncio.to_thread(safefs.chown_tree, space.workspace, space.uid, space.gid)
            if space.network.filtered:  # shared with the job's other runtime (docker) if it made it
                await egress.up(space.owner, space.labels[LABEL_JOB], space.network, space.root)
        except egress.EgressError as exc:
            raise RuntimeFailure(f"cannot set up the job's network: {exc}", reason=Reason.SANDBOX) from exc
        except (CgroupError, ValueError) as exc:
            raise RuntimeFailure(f"cannot set up the job's sandbox: {exc}", reason=Reason.SANDBOX) from exc
        except OSError as exc:
            raise RuntimeFailure(
                f"cannot prepare the workspace {space.workspace}: {exc}", reason=Reason.SANDBOX
            ) from exc

    async def run_step(self, space: JobSpace, step: Step, output: OutputSink) -> StepResult:
        cgroup = self.cgroup(space)
        if not step.argv:
            return StepResult(exit_code=1, reason=Reason.SANDBOX, message="the step has no command")
        if not cgroup.exists():
            return StepResult(exit_code=1, reason=Reason.SANDBOX, message="the job's cgroups are missing")
        sink = stopping.LineSink(output)
        if step.kind == "docker" and step.image:
            sink.say(f"the shell runtime runs steps on the host's tools; image {step.image} is not used")
        oom_before = cgroup.oom_kills()
        procs_files = cgroup.procs_files()
        try:
            with seccomp.program_fd() as fd, env_fd(self.environment(space, step)) as efd:
                proc = await asyncio.create_subprocess_exec(
                    *self.build_argv(space, step, fd, efd),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    env={"PATH": DEFAULT_PATH},  # bwrap's own; the step gets a cleared environment
                    start_new_session=True,
                    preexec_fn=lambda: _join_cgroups(procs_files),
                    pass_fds=(fd, efd),
                )
        except seccomp.SeccompUnavailable as exc:
            return StepResult(exit_code=1, reason=Reason.SANDBOX, message=str(exc))
        except (OSError, subprocess.SubprocessError) as exc:
            return StepResult(exit_code=1, reason=Reason.SANDBOX, message=f"cannot start the sandbox: {exc}")
        assert proc.stdout is not None
        pump = asyncio.create_task(_pump(proc.stdout, sink))
        try:
            returncode = await proc.wait()
            await cgroup.kill_all()  # a job must not leave processes behind
            await self._drain(pump)
        except asyncio.CancelledError as exc:
            sink.say(stopping.note(exc, space.kill_grace))  # the log says why, and when SIGKILL comes
            # The grace must survive further cancels: the worker cancels the job again whenever the
            # server repeats "cancel" (cancel watch, heartbeat) while the step is still running, and
            # cutting the grace short then SIGKILLed the step before its trap could run. The grace
            # is bounded (kill_grace, then SIGKILL), so waiting it out cannot hang.
            terminate = asyncio.ensure_future(self._terminate(space, cgroup, proc, pump))
            while not terminate.done():
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.shield(terminate)
            if terminate.exception() is not None:  # failed: at least kill without waiting
                self._kill_now(cgroup, proc)
                pump.cancel()
            raise
        except BaseException:
            self._kill_now(cgroup, proc)
            pump.cancel()
            raise
        oom_killed = cgroup.oom_kills() > oom_before
        return StepResult(exit_code=_exit_code(returncode), oom_killed=oom_killed)

    async def _terminate(
        self, space: JobSpace, cgroup: JobCgroup, proc: asyncio.subprocess.Process, pump: asyncio.Task[None]
    ) -> None:
        """SIGTERM the step's processes, give them kill_grace seconds, then SIGKILL everything."""
        if proc.returncode is None:
            # Spare bwrap's outer process: its death would SIGKILL the sandbox without any grace.
            # bwrap's PID 1 ignores SIGTERM (it has no handler), the step's processes get it.
            await cgroup.signal_all(signal.SIGTERM, exclude={proc.pid})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), timeout=max(0.0, space.kill_grace))
        await cgroup.kill_all()
        with contextlib.suppress(ProcessLookupError):
            proc.kill()  # not in the cgroup only if it never got there; normally already dead
        await proc.wait()
        await self._drain(pump)

    @staticmethod
    def _kill_now(cgroup: JobCgroup, proc: asyncio.subprocess.Process) -> None:
        """Synchronous last resort: SIGKILL bwrap (--die-with-parent takes the sandbox down) and the rest."""
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        for pid in cgroup.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    @staticmethod
    async def _drain(pump: asyncio.Task[None]) -> None:
        """Let the output pump reach EOF (every writer is dead by now); cancel it if it does not."""
        try:
            await asyncio.wait_for(asyncio.shield(pump), timeout=DRAIN_TIMEOUT_S)
        except TimeoutError:
            log.warning("step output pipe still open after all processes ended")
            pump.cancel()

    async def cleanup(self, space: JobSpace) -> None:
        """Kill whatever is left in the job's cgroups and remove them. Idempotent; never raises for 'gone'."""
        try:
            cgroup = self.cgroup(space)
        except ValueError:
            return  # a name prepare() refused: nothing was created
        await self._remove(cgroup)
        if space.network.filtered:
            try:
                await egress.down(space.owner, space.labels[LABEL_JOB])
            except netns.NetnsError as exc:
                log.warning("cannot remove the network of %s: %s (the janitor will retry)", space.name, exc)

    async def _remove(self, cgroup: JobCgroup) -> bool:
        try:
            await cgroup.kill_all()
            await cgroup.remove()
        except (CgroupError, OSError) as exc:
            log.warning("cannot remove cgroup %s: %s (the janitor will retry)", cgroup.name, exc)
            return False
        return True

    async def janitor(self, live: set[str]) -> list[str]:
        """Remove job cgroups under cgroup_parent whose label (name minus ``corral-``) is not in `live`."""
        removed: list[str] = []
        for name in job_cgroup_names(self.cgroup_parent, self.cgroup_root):
            if name[len(NAME_PREFIX) :] in live:
                continue
            if await self._remove(JobCgroup(self.cgroup_parent, name, self.cgroup_root)):
                removed.append(name)
        return removed


if TYPE_CHECKING:
    _conforms: Runtime = ShellRuntime()
