"""`corral server` as an operator runs it: refuses a short secret, answers /healthz, and on SIGTERM
ends held long-polls at once (a "no job" answer) instead of leaving executors hanging."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx

from corral.embedded import free_port
from tests.e2e.kit import CORRAL, SECRET, wait_healthy


def test_short_secret_is_refused(tmp_path: Path) -> None:
    env = {**os.environ, "EXECUTORS_ACCESS_TOKEN": "too-short"}
    p = subprocess.run(
        [CORRAL, "server", "--data-dir", str(tmp_path)], env=env, capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 2
    assert "EXECUTORS_ACCESS_TOKEN is 9 characters long; it must be at least 20" in p.stderr


def test_sigterm_ends_held_long_polls(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "EXECUTORS_ACCESS_TOKEN": SECRET}
    p = subprocess.Popen(
        [CORRAL, "server", "--port", str(port), "--data-dir", str(tmp_path)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, p)
        assert (tmp_path / "admin-token").stat().st_mode & 0o777 == 0o600  # generated, private
        result: dict[str, httpx.Response] = {}
        body = {"executorName": "e1", "version": "0.1.0", "waitSeconds": 30}
        headers = {"Authorization": f"token-executor {SECRET}"}
        poll = threading.Thread(
            target=lambda: result.update(
                r=httpx.post(
                    f"{url}/.executors/queue/batches/dequeue", json=body, headers=headers, timeout=60
                )
            )
        )
        poll.start()
        deadline = time.monotonic() + 20
        admin = {"Authorization": f"Bearer {(tmp_path / 'admin-token').read_text().strip()}"}
        while (
            "corral_long_polls_waiting 1.0" not in httpx.get(f"{url}/metrics", headers=admin, timeout=5).text
        ):
            assert time.monotonic() < deadline, "the long-poll never parked"
            time.sleep(0.05)
        t0 = time.monotonic()
        p.send_signal(signal.SIGTERM)
        poll.join(40)
        assert result["r"].status_code == 204
        assert time.monotonic() - t0 < 20  # ended by the stop, not by its 30 s wait
        assert p.wait(30) in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after a clean stop
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    out = p.stdout.read().decode() if p.stdout else ""
    assert "Traceback" not in out, out


def test_the_data_dir_is_private(tmp_path: Path) -> None:
    """It holds the job database (every job's secrets): a process of another uid must not read it."""
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    os.chmod(data, 0o755)
    port = free_port()
    env = {**os.environ, "EXECUTORS_ACCESS_TOKEN": SECRET}
    cmd = [CORRAL, "server", "--port", str(port), "--data-dir", str(data)]
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", p)
        assert data.stat().st_mode & 0o777 == 0o700
        assert (data / "corral.db").exists()
    finally:
        p.terminate()
        p.wait(15)
