"""CLI steps inside the firecracker runtime's microVM, end to end: a real server, a real executor
(EXECUTOR_RUNTIME=firecracker, its own EXECUTOR_VM_PREFIX) whose EXECUTOR_CLI_PATH is a script this
test makes; one job of two docker steps in two images and four CLI steps (one runs corral's own
CLI), all in one VM (qemu, TCG here). A CLI step runs in the guest's kernel, as the job's uid, in
the job's workspace, and sees neither the host's /etc/shadow, /root, /home, the workspace root
(other jobs), nor the executor's environment; a failing CLI step stops the job with its exit code."""

from __future__ import annotations

import os
import secrets
import shlex
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import corral
from tests.conftest import bwrap_ok, docker_ok, require
from tests.e2e.kit import SECRET, Server, logs_text, run_server, start_executor, wait_job

# The executor's CLI: what a CLI step runs, with the step's command as its arguments.
FAKE_CLI = """#!/bin/sh
case "$1" in
probe)
    echo "kernel=$(cat /proc/version)"
    echo "uid=$(id -u) user=$USER home=$HOME pwd=$(pwd)"
    cat note.txt
    echo "in-root: $(ls -A /root 2>/dev/null | tr '\n' ' ')"
    for p in /etc/shadow /home "$2" "$2/other-job" /var/lib/docker; do
        if ls -d "$p" > /dev/null 2>&1; then echo "visible $p"; else echo "absent $p"; fi
    done
    cat /proc/1/environ > /dev/null 2>&1 && echo "init-env readable" || echo "init-env unreadable"
    for p in /usr/planted /planted /etc/planted "${0%/*}/planted"; do
        if touch "$p" 2> /dev/null; then echo "wrote $p"; else echo "read-only $p"; fi
    done
    env | sort | sed 's/^/env: /'
    echo "$GREETING" > from-cli.txt && echo "owner=$(stat -c %u from-cli.txt) $(cat from-cli.txt)"
    ;;
fail)
    echo "failing with $2"
    exit "$2"
    ;;
corral)
    shift
    exec "$CORRAL" "$@"
    ;;
esac
"""


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    require(docker_ok(), "Docker Engine is not reachable (run scripts/setup.sh)")
    require(bwrap_ok(), "bubblewrap, cgroup v1 and root are needed (the diff's shell sandbox)")
    require(shutil.which("qemu-system-x86_64") is not None, "qemu-system-x86 is not installed")
    from corral.executor.runtimes.firecracker import assets

    assets.ensure_assets()  # the initramfs of this tree's guest scripts (a no-op when in place)
    with run_server(tmp_path, max_attempts=1) as s:
        yield s


def test_cli_steps_run_inside_the_microvm_and_a_failing_one_stops_the_job(
    server: Server, tmp_path: Path
) -> None:
    cli = tmp_path / "clibin" / "fakecli"
    cli.parent.mkdir()
    # corral's own CLI too: its virtualenv and Python are bound into every CLI step (registry.cli_binds)
    cli.write_text(FAKE_CLI.replace('"$CORRAL"', shlex.quote(str(Path(sys.executable).with_name("corral")))))
    cli.chmod(0o755)
    ws_root = tmp_path / "ws"
    (ws_root / "other-job").mkdir(parents=True)
    (ws_root / "other-job" / "secret.txt").write_text("another job's file\n")
    prefix = f"t{secrets.token_hex(4)}-fcc"
    start_executor(
        server,
        tmp_path,
        "firecracker",
        EXECUTOR_VM_PREFIX=prefix,
        EXECUTOR_JOB_MEMORY="256M",
        EXECUTOR_CLI_PATH=str(cli),
    )
    job = server.client.submit(
        "batches",
        {
            "dockerSteps": [
                {"image": "corral/busybox:1", "commands": ["uname -r", "echo from-docker > note.txt"]},
                {"image": "corral/tools:1", "commands": ["test -x /bin/corral-fmt && echo has-fmt"]},
            ],
            "cliSteps": [
                {"key": "probe", "command": ["probe", str(ws_root)], "env": ["GREETING=hello from cli"]},
                {"key": "version", "command": ["corral", "version", "--json"]},
                {"key": "fail", "command": ["fail", "5"]},
                {"key": "never", "command": ["probe", "/"]},
            ],
        },
    )
    done = wait_job(server, job["id"], ("completed", "failed", "errored", "canceled"), timeout=300)
    text = logs_text(server, job["id"])
    assert done["state"] == "failed", (done, text)
    assert "exit code 5" in done["error"] and "step.src.fail" in done["error"], done
    entries = {e["key"]: e for e in server.client.logs(job["id"])["entries"]}
    assert entries["step.docker.0"]["exitCode"] == 0 and entries["step.docker.1"]["exitCode"] == 0, entries
    assert "has-fmt" in entries["step.docker.1"]["out"]
    probe, fail = entries["step.src.probe"], entries["step.src.fail"]
    assert probe["exitCode"] == 0, probe
    assert fail["exitCode"] == 5 and "failing with 5" in fail["out"], fail
    assert "step.src.never" not in entries
    version = entries["step.src.version"]
    assert version["exitCode"] == 0 and f'"version": "{corral.__version__}"' in version["out"], version
    out = probe["out"]
    # the guest's kernel (the one the docker step saw), not the host's
    guest = next(line for line in entries["step.docker.0"]["out"].split("\n") if line.endswith("-amd64"))
    assert guest != os.uname().release
    assert f"kernel=Linux version {guest} " in out, out
    assert os.uname().release not in out
    # the job's uid, HOME=/tmp, in the job's workspace (which the docker step wrote)
    assert "uid=0 " not in out and "user=job home=/tmp pwd=/data" in out, out
    assert "from-docker" in out
    # nothing of the host beyond /usr and the CLI
    for path in ("/etc/shadow", "/home", str(ws_root), f"{ws_root}/other-job", "/var/lib/docker"):
        assert f"absent {path}\n" in out, (path, out)
    # /root holds only the way to a bound CLI installation (corral's Python may live under it)
    shown = set(out.split("in-root: ", 1)[1].split("\n", 1)[0].split())
    ours = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, corral.__file__)}
    assert shown <= {p.split("/")[2] for p in ours if p.startswith("/root/")}, (shown, ours)
    assert "init-env unreadable" in out  # init's environment is root's
    # the root, /usr and /etc are read-only; next to the CLI is the step's own /tmp, not the host's
    for path in ("/usr/planted", "/planted", "/etc/planted"):
        assert f"read-only {path}\n" in out, (path, out)
    assert not (cli.parent / "planted").exists()
    env = [line.removeprefix("env: ") for line in out.split("\n") if line.startswith("env: ")]
    names = {e.partition("=")[0] for e in env}
    assert names <= {"PATH", "HOME", "USER", "PWD", "GREETING", "SHLVL", "_", "OLDPWD"}, env
    assert "GREETING=hello from cli" in env
    assert SECRET not in text and "EXECUTOR_" not in out and "DOCKER_CONFIG" not in out
    # the CLI step wrote into the job's workspace as the job's uid
    uid = out.split("uid=", 1)[1].split()[0]
    assert f"owner={uid} hello from cli" in out, out
