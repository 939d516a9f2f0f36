"""Redaction on every channel with a real server, a real executor and real git or docker: a step that
prints the secret and writes it into the repository and an output (shell runtime), a clone failing on
a repository named by the secret (shell runtime), a pull failing on an image named by it with the
secret as registry password (docker runtime, a closed loopback registry). Nothing of the secret
reaches the job log, the error, the diff, the outputs, the executor's own log, or the CLI (`corral
job get/logs/result`, human and --json): the CLI is the producer's UI (corral has no web UI yet)."""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import subprocess
from pathlib import Path

from tests.conftest import bwrap_ok, docker_ok, require
from tests.e2e.kit import (
    ADMIN,
    CORRAL,
    docker_job,
    logs_text,
    make_repo,
    run_server,
    start_executor,
    wait_job,
)
from tests.integration.test_runtime_docker import closed_port
from tests.unit.redact_kit import leaks

SECRET = "sgp_0123456789abcdef0123456789abcdef01234567"
VALUES = {SECRET: "[SECRET]"}


def cli(url: str, *args: str) -> str:
    env = {**os.environ, "CORRAL_URL": url, "CORRAL_ADMIN_TOKEN": ADMIN}
    p = subprocess.run([CORRAL, *args], env=env, capture_output=True, timeout=60)
    return (p.stdout + p.stderr).decode("utf-8", "replace")


def test_a_secret_reaches_no_channel(tmp_path: Path) -> None:
    require(bwrap_ok(), "bubblewrap, cgroup v1 and root are needed for the shell runtime")
    with run_server(tmp_path) as server:
        make_repo(tmp_path / "src", {"README.md": "hello\n"})
        server.client.add_repo("acme/app", str(tmp_path / "src"))
        start_executor(server, tmp_path, "shell")
        printed = (
            f'echo "plain {SECRET}"; printf %s "user:{SECRET}" | base64 -w 20; '
            f'printf %s "{SECRET}" | od -An -tx1; echo "{SECRET}" >> README.md; '
            f'mkdir -p out; printf "token=%s\\n" "{SECRET}" > out/config.txt; '
            # split by invisible bytes (review 12a H1): `corral job logs` would join the halves
            f'echo "{SECRET}" | sed "s/^\\(.\\{{20\\}}\\)/split \\1\\x1b[0m/"; '
            f'printf %s "{SECRET}" | sed "s/./&\\x07/g"'
        )
        step = docker_job(printed)["dockerSteps"]
        ok = server.client.submit(
            "batches",
            {
                "repositoryName": "acme/app",
                "commit": "HEAD",
                "dockerSteps": step,
                "outputs": ["out/config.txt"],
                "redactedValues": VALUES,
            },
        )
        done = wait_job(server, ok["id"], timeout=120)
        assert done["state"] == "completed", done

        log = logs_text(server, ok["id"])
        assert "plain [SECRET]" in log and "results.redacted" in log and "split [SECRET]" in log, log
        result = server.client.result(ok["id"])
        assert "+[SECRET]" in result["diff"], result["diff"]
        config = base64.b64decode(result["files"]["out/config.txt"])
        assert config == b"token=[SECRET]\n", config
        texts = {
            "job log": log,
            "diff": result["diff"],
        }
        for job_id in (ok["id"],):
            for args in (
                ("get",),
                ("get", "--json"),
                ("logs",),
                ("logs", "--json"),
                ("result",),
                ("result", "--diff"),
                ("result", "--json"),
            ):
                texts[f"corral job {' '.join(args)} {job_id}"] = cli(
                    server.url, "job", args[0], str(job_id), *args[1:]
                )
        for p in server.executors:  # the executor's own log, once it has stopped
            p.terminate()
            p.wait(30)
        texts["executor log"] = (tmp_path / "executor-0.log").read_text(errors="replace")
        assert "plain [SECRET]" in texts[f"corral job logs {ok['id']}"], texts
        for name, text in texts.items():
            assert not leaks(SECRET, text.encode()), (name, text)


def test_a_failing_clone_naming_the_secret_is_redacted(tmp_path: Path) -> None:
    """The repository's name holds the secret and its mirror is gone by the time the executor clones:
    git's error echoes the clone URL (with the name) into the fetch's log entry."""
    require(bwrap_ok(), "bubblewrap, cgroup v1 and root are needed for the shell runtime")
    with run_server(tmp_path, max_attempts=1) as server:
        name = f"acme/{SECRET}"
        make_repo(tmp_path / "src", {"README.md": "hello\n"})
        server.client.add_repo(name, str(tmp_path / "src"))
        job = server.client.submit(
            "batches",
            {"repositoryName": name, "commit": "HEAD", **docker_job("true"), "redactedValues": VALUES},
        )
        # The mirror is gone (a disk problem on the server): the server answers the clone with 404.
        (mirror,) = [p for p in (tmp_path / "server" / "repos").rglob("*") if p.name.startswith(SECRET)]
        shutil.rmtree(mirror)
        start_executor(server, tmp_path, "shell")
        done = wait_job(server, job["id"], timeout=120)
        assert done["state"] == "failed", done
        log = logs_text(server, job["id"])
        assert "[SECRET]" in log and "clone failed" in done["error"], (log, done)
        texts = {"log": log, "error": done["error"], "view": cli(server.url, "job", "get", str(job["id"]))}
        texts["logs --json"] = cli(server.url, "job", "logs", "--json", str(job["id"]))
        for p in server.executors:
            p.terminate()
            p.wait(30)
        texts["executor log"] = (tmp_path / "executor-0.log").read_text(errors="replace")
        for what, text in texts.items():
            assert not leaks(SECRET, text.encode()), (what, text)


def test_a_failing_pull_naming_the_secret_is_redacted(tmp_path: Path) -> None:
    """Docker's pull error echoes the image reference (here naming the secret) and the registry; the
    job's registry password is the secret too. The registry is a closed loopback port: nothing leaves
    the machine."""
    require(docker_ok(), "Docker Engine is not reachable (run scripts/setup.sh)")
    require(bwrap_ok(), "bubblewrap, cgroup v1 and root are needed (the shell sandbox)")
    registry = f"127.0.0.1:{closed_port()}"
    with run_server(tmp_path, max_attempts=1) as server:
        start_executor(
            server,
            tmp_path,
            "docker",
            EXECUTOR_VM_PREFIX=f"t{secrets.token_hex(4)}-redact",
            EXECUTOR_DOCKER_ALLOWED_REGISTRIES=registry,
        )
        auth = base64.b64encode(f"robot:{SECRET}".encode()).decode()
        job = server.client.submit(
            "batches",
            {
                **docker_job(f"echo {SECRET}", image=f"{registry}/acme/{SECRET}:1"),
                "dockerAuthConfig": {"auths": {registry: {"auth": auth}}},
                "redactedValues": VALUES,
            },
        )
        done = wait_job(server, job["id"], timeout=120)
        assert done["state"] == "failed", done
        assert "cannot be reached" in done["error"] and "[SECRET]" in done["error"], done
        log = logs_text(server, job["id"])
        assert "cannot be reached" in log, log
        texts = {"log": log, "error": done["error"]}
        for args in (("get",), ("get", "--json"), ("logs",), ("logs", "--json")):
            texts[" ".join(args)] = cli(server.url, "job", args[0], str(job["id"]), *args[1:])
        for p in server.executors:
            p.terminate()
            p.wait(30)
        texts["executor log"] = (tmp_path / "executor-0.log").read_text(errors="replace")
        for what, text in texts.items():
            assert not leaks(SECRET, text.encode()), (what, text)
            assert auth not in text, (what, text)


def cli_on_a_terminal(url: str, *args: str) -> bytes:
    """What the CLI writes when its stdout is a terminal (a pty the test made)."""
    import pty
    import select

    env = {**os.environ, "CORRAL_URL": url, "CORRAL_ADMIN_TOKEN": ADMIN}
    master, slave = pty.openpty()
    try:
        p = subprocess.Popen([CORRAL, *args], env=env, stdout=slave, stderr=subprocess.DEVNULL)
        os.close(slave)
        out = b""
        for _ in range(6000):  # bounded: at most ~60 s
            ready, _w, _x = select.select([master], [], [], 0.01)
            if ready:
                try:
                    piece = os.read(master, 65536)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not piece:
                    break
                out += piece
            elif p.poll() is not None and not select.select([master], [], [], 0)[0]:
                break
        assert p.wait(60) == 0, out
        return out
    finally:
        os.close(master)


def test_job_result_keeps_control_sequences_off_the_terminal_and_exact_for_a_pipe(tmp_path: Path) -> None:
    """Review 12a H3: `corral job result --diff` / `--file` on a terminal get no escape sequence of the job
    (OSC 52 clipboard write, window title, colours); piped, the diff is exact and `git apply` takes it;
    `--raw` gives the exact bytes on a terminal too."""
    require(bwrap_ok(), "bubblewrap, cgroup v1 and root are needed for the shell runtime")
    with run_server(tmp_path) as server:
        make_repo(tmp_path / "src", {"README.md": "hello\n"})
        server.client.add_repo("acme/app", str(tmp_path / "src"))
        start_executor(server, tmp_path, "shell")
        hostile = r"a\033]52;c;ZXZpbA==\007b\033]0;pwned\007c\033[2Jd\033[31me\n"
        step = docker_job(
            f"printf '{hostile}' > ansi.txt; mkdir -p out; printf '{hostile}' > out/ansi.txt; "
            f'printf "S3cr3t\\033[0mV4lue-XYZ-9q8w7e\\n" > split.txt'
        )["dockerSteps"]
        job = server.client.submit(
            "batches",
            {
                "repositoryName": "acme/app",
                "commit": "HEAD",
                "dockerSteps": step,
                "outputs": ["out/ansi.txt"],
                "redactedValues": {"S3cr3tV4lue-XYZ-9q8w7e": "[SECRET]"},
            },
        )
        done = wait_job(server, job["id"], timeout=120)
        assert done["state"] == "completed", done
        result = server.client.result(job["id"])
        assert "\x1b]52;c;" in result["diff"], result["diff"]  # the job's bytes, as stored
        assert "+[SECRET]" in result["diff"] and "S3cr3t" not in result["diff"], result["diff"]
        jid = str(job["id"])

        shown = cli_on_a_terminal(server.url, "job", "result", jid, "--diff")
        assert b"+abcde" in shown, shown  # the text, without the sequences
        file_shown = cli_on_a_terminal(server.url, "job", "result", jid, "--file", "out/ansi.txt")
        assert file_shown.replace(b"\r\n", b"\n") == b"abcde\n", file_shown
        for out in (shown, file_shown):
            assert not any(b in out for b in (b"\x1b", b"\x07", b"\x9b", b"\xc2\x9d")), out
            assert b"S3cr3t" not in out, out

        raw = cli_on_a_terminal(server.url, "job", "result", jid, "--file", "out/ansi.txt", "--raw")
        assert b"\x1b]52;c;ZXZpbA==\x07" in raw, raw  # --raw: exact, on a terminal too

        env = {**os.environ, "CORRAL_URL": server.url, "CORRAL_ADMIN_TOKEN": ADMIN}
        piped = subprocess.run(
            [CORRAL, "job", "result", jid, "--diff"], env=env, capture_output=True, timeout=60, check=True
        ).stdout
        assert piped == result["diff"].encode(), piped  # exact for a pipe
        clone = tmp_path / "clone"
        subprocess.run(
            ["git", "clone", "-q", str(tmp_path / "src"), str(clone)], check=True, capture_output=True
        )
        subprocess.run(["git", "-C", str(clone), "apply"], input=piped, check=True, capture_output=True)
        assert (
            clone / "ansi.txt"
        ).read_bytes() == b"a\x1b]52;c;ZXZpbA==\x07b\x1b]0;pwned\x07c\x1b[2Jd\x1b[31me\n"
        piped_file = subprocess.run(
            [CORRAL, "job", "result", jid, "--file", "out/ansi.txt"], env=env, capture_output=True, timeout=60
        ).stdout
        assert piped_file == (clone / "ansi.txt").read_bytes(), piped_file
