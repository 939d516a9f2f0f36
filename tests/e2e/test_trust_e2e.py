"""Trust edges a job's step can see (issue 12 item 6), with real executors in both sandboxes: the
executor's secret and the job's own token are nowhere in what a step can read; another job's
workspace is out of reach; a corral executor refuses a server too many versions away.

The step cannot be handed the values it looks for in its commands or env (they would then be in
its own script and env). So the test learns the job token as the server hands it out (a wrapper
around the server's store, in this process), and once the step has started it writes both values
into a pattern file in the step's workspace from the host; the step greps everything it can see
for them with `grep -F -f <that file>` (the values are then in no command line) and reports the
paths it found, that file excepted.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from corral.client import ProducerClient
from corral.embedded import free_port, serve_in_thread
from corral.server.settings import ServerSettings
from tests.conftest import bwrap_ok, require
from tests.e2e.kit import (
    ADMIN,
    SECRET,
    Server,
    docker_job,
    logs_text,
    make_repo,
    start_executor,
    stop_executor,
    wait_job,
)

WAIT_STEPS = 600  # the step waits at most 600 x 0.1 s for the host's pattern file
MARKER_TIMEOUT = 60.0  # seconds the test waits for the step to start


@contextmanager
def server_seeing_tokens(tmp: Path) -> Iterator[tuple[Server, list[str]]]:
    """tests.e2e.kit.run_server, plus the list of job tokens the server hands out."""
    port = free_port()
    settings = ServerSettings(
        host="127.0.0.1", port=port, data_dir=tmp / "server", executors_access_token=SECRET, admin_token=ADMIN
    )
    srv, thread = serve_in_thread(settings)
    store = srv.config.app.state.corral.store
    tokens: list[str] = []
    dequeue = store.dequeue

    def recording(queue_names: list[str], executor_name: str, token: str) -> Any:
        row = dequeue(queue_names, executor_name, token)
        if row is not None:
            tokens.append(token)
        return row

    store.dequeue = recording
    url = f"http://127.0.0.1:{port}"
    server = Server(url=url, client=ProducerClient(url, ADMIN), settings=settings)
    try:
        yield server, tokens
    finally:
        for p in server.executors:
            stop_executor(p)
        server.client.close()
        srv.should_exit = True
        thread.join(10)


def output_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if not line.startswith("+")]


def wait_line(server: Server, job_id: int, line: str, timeout: float) -> str:
    """The job's log once one of its output lines is exactly `line` (its trace line is not)."""
    deadline = time.monotonic() + timeout
    while line not in output_lines(text := logs_text(server, job_id)):
        state = server.client.get(job_id)["state"]
        tail = text[-3000:]
        assert state in ("queued", "processing"), f"job {job_id} ended {state} before {line!r}: {tail}"
        assert time.monotonic() < deadline, f"no {line!r} in job {job_id} after {timeout}s ({state}): {tail}"
        time.sleep(0.2)
    return text


def find_marker(root: Path, name: str) -> Path:
    """The host directory (under the executors' workspace root) holding the file a step made."""
    deadline = time.monotonic() + MARKER_TIMEOUT
    while time.monotonic() < deadline:
        for dirpath, _dirs, files in os.walk(root):
            if name in files:
                return Path(dirpath)
        time.sleep(0.1)
    raise AssertionError(f"no step made {name} under {root} within {MARKER_TIMEOUT}s")


def wait_for(file: str) -> str:
    """Shell: wait (bounded) until `file` exists in the step's directory."""
    return (
        f"i=0; while [ ! -f {file} ] && [ $i -lt {WAIT_STEPS} ]; do sleep 0.1; i=$((i+1)); done; "
        f"[ -f {file} ] || {{ echo 'never got {file}'; exit 3; }}"
    )


# Everything the step can see: every regular file under every top-level directory but /proc, /sys
# and symlinks (/bin -> usr/bin); of /dev only /dev/shm (device nodes hold no files, and reading one
# such as /dev/zero never ends); the shell sandbox's /usr is the host's, read-only and the same for
# every job (5.7 GB), skipped there; every visible process's environ and cmdline; the step's env.
SCAN = (
    # steps fail fast (set -e): a grep that finds nothing must not end the scan; and no trace (set
    # +x): stderr's "+ ..." lines interleave with stdout, and CI once saw "+ PROC ..." (a trace's
    # "+ " and the echo on one line), which no output line check can read
    "set +ex; "
    'P="$(pwd)/pattern"; '
    'for d in /*; do case $d in /proc|/sys) continue;; /dev) d=/dev/shm;; esac; [ -L "$d" ] && continue; '
    '[ "$d" = /usr ] && [ "$SKIP_USR" = 1 ] && continue; '
    'find "$d" -type f -exec grep -lsF -f "$P" {} + 2>/dev/null; done '
    '| grep -vxF "$P" | sed "s/^/HIT file /"; '
    "for p in /proc/[0-9]*; do for f in environ cmdline; do "
    'grep -lsF -f "$P" $p/$f | sed "s/^/HIT proc /"; done; done; '
    'env | grep -cF -f "$P" | sed "s/^/ENV-HITS /"; '
    'for p in /proc/[0-9]*; do echo "PROC $(tr "\\0" " " < $p/cmdline)"; done; '
    "echo SCAN-DONE"
)


def _without(text: str, parts: tuple[str, ...]) -> str:
    for part in parts:
        text = text.replace(part, "")
    return text


def test_a_step_sees_neither_the_executor_secret_nor_the_job_token(runtime: str, tmp_path: Path) -> None:
    with server_seeing_tokens(tmp_path) as (server, tokens):
        make_repo(tmp_path / "src", {"README.md": "hello\n"})
        server.client.add_repo("acme/app", str(tmp_path / "src"))
        start_executor(server, tmp_path, runtime)
        env = ["SKIP_USR=1"] if runtime == "shell" else []
        job = server.client.submit(
            "batches",
            {
                "repositoryName": "acme/app",
                "commit": "HEAD",
                "dockerSteps": [
                    {
                        "image": "corral/busybox:1",
                        "commands": ["touch trust-marker", wait_for("pattern.ready"), SCAN],
                        "env": env,
                    }
                ],
            },
        )
        ws = find_marker(tmp_path / "ws", "trust-marker")
        assert len(tokens) == 1 and tokens[0]
        # The clone used the token (it fetched through the job's git route), and left it nowhere.
        pattern = ws / "pattern"
        pattern.write_text(f"{SECRET}\n{tokens[0]}\n")
        pattern.chmod(0o644)
        (ws / "pattern.ready").write_text("")
        done = wait_job(server, job["id"], timeout=240)
        text = logs_text(server, job["id"])
        assert done["state"] == "completed", (done, text[-3000:])
        lines = output_lines(text)  # the step's output, not its trace (set -x: "+ ...")
        assert "SCAN-DONE" in lines, text[-3000:]
        assert [line for line in lines if line.startswith("HIT ")] == [], text[-3000:]
        assert "ENV-HITS 0" in lines, text[-3000:]
        # The executor's processes are not visible (a pid namespace): only the step's own.
        procs = [line for line in lines if line.startswith("PROC ")]
        assert procs, text[-3000:]
        ours = (".corral-steps", "corral-step", "/run/corral-env")  # the sandbox's own names
        assert not [p for p in procs if "corral" in _without(p, ours) or "executor" in p], procs
        assert "setup.git.fetch" in [e["key"] for e in server.client.logs(job["id"])["entries"]]


def test_a_step_cannot_read_another_running_jobs_workspace(
    server: Server, runtime: str, tmp_path: Path
) -> None:
    start_executor(server, tmp_path, runtime, EXECUTOR_MAXIMUM_NUM_JOBS="2")
    private = "job-a-private-0f3e9b"
    a = server.client.submit(
        "batches",
        docker_job(
            f"echo {private} > a-secret.txt",
            "touch a-marker",
            wait_for("a-release"),
            "cat a-secret.txt",  # the control: job A reads its own file
        ),
    )
    ws_a = find_marker(tmp_path / "ws", "a-marker")
    # On the host: A's private directory is root's and 0700; its workspace belongs to A's user.
    job_root = ws_a.parent
    st_root, st_ws = job_root.stat(), ws_a.stat()
    assert st_root.st_uid == 0 and stat.S_IMODE(st_root.st_mode) == 0o700, oct(st_root.st_mode)
    assert st_ws.st_uid != 0
    attempts = [
        "set +e",  # every attempt is expected to fail; the step goes on (steps fail fast otherwise)
        f"cat {ws_a}/a-secret.txt",
        f"ls {ws_a}",
        f"ls {job_root}",
        "for p in /proc/[0-9]*; do cat $p/root/data/a-secret.txt $p/cwd/a-secret.txt 2>/dev/null; done",
        "find / -path /proc -prune -o -path /sys -prune -o -path /usr -prune -o -name a-secret.txt -print"
        " 2>/dev/null | head -5",
        "id -u | sed 's/^/UID /'",
        "echo B-DONE",
    ]
    b = server.client.submit("batches", docker_job(*attempts))
    text_b = wait_line(server, b["id"], "B-DONE", timeout=300)  # a loaded 2-core CI machine
    assert server.client.get(a["id"])["state"] == "processing"  # A was running all along
    assert private not in text_b, text_b[-3000:]
    seen = [line for line in output_lines(text_b) if line.endswith(("a-secret.txt", "a-marker"))]
    assert [line for line in seen if not line.startswith(("cat:", "ls:"))] == [], text_b[-3000:]
    (ws_a / "a-release").write_text("")
    assert wait_job(server, a["id"], timeout=120)["state"] == "completed"
    assert private in logs_text(server, a["id"])
    # B ran as another user than A's workspace owner.
    uid_b = next(int(line.split()[1]) for line in output_lines(text_b) if line.startswith("UID "))
    assert uid_b != st_ws.st_uid


def test_a_corral_executor_refuses_a_server_two_minor_versions_away(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require(bwrap_ok(), "bubblewrap, cgroup v1 and root are needed (the shell sandbox)")
    import corral.server.app
    import corral.server.routers.queue
    from corral import __version__

    skewed = "0.3.0"
    monkeypatch.setattr(corral.server.routers.queue, "__version__", skewed)
    monkeypatch.setattr(corral.server.app, "__version__", skewed)
    with server_seeing_tokens(tmp_path) as (server, tokens):
        job = server.client.submit("batches", docker_job("echo never"))
        p = start_executor(server, tmp_path, "shell")
        rc = p.wait(60)
        log = (tmp_path / "executor-0.log").read_text()
        assert rc == 2, log[-2000:]  # the CLI's error exit
        assert f"executor version {__version__} is too far from server version {skewed}" in log, log[-2000:]
        assert "at most one minor version apart" in log
        assert server.client.get(job["id"])["state"] == "queued" and tokens == []
