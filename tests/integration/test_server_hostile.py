"""Hostile clients against a real `corral server` process on 127.0.0.1: big bodies without a token,
with a wrong token, and big or token-heavy bodies with a valid one. The server must answer fast,
without buffering the bodies (its RSS is read from /proc) and without freezing its event loop."""

from __future__ import annotations

import asyncio
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from corral.embedded import free_port
from tests.e2e.kit import CORRAL, SECRET, wait_healthy

ADMIN = "hostile-admin-token-0123456789"
MiB = 1024 * 1024
ATTACK_BYTES = 60 * MiB  # each hostile body: under the default max_body_bytes (64 MiB)
CONNECTIONS = 10  # hostile bodies sent at once
RSS_GROWTH_MAX = 150 * MiB  # the server may grow this much during the attack (old code: > 1 GB)
ANSWER_WITHIN = 5.0  # seconds for each hostile request to be answered (old code: 18 s)
PROBE_MAX = 1.0  # seconds: longest /healthz answer while under attack (a frozen loop: several)


@dataclass
class Proc:
    url: str
    port: int
    pid: int


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Proc]:
    port = free_port()
    env = {**os.environ, "EXECUTORS_ACCESS_TOKEN": SECRET, "CORRAL_ADMIN_TOKEN": ADMIN}
    p = subprocess.Popen(
        [CORRAL, "server", "--port", str(port), "--data-dir", str(tmp_path / "srv")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, p)
        yield Proc(url=url, port=port, pid=p.pid)
    finally:
        p.terminate()
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"{field} not in /proc/{pid}/status")


def token_heavy_body(size: int) -> bytes:
    """A valid JSON object of about `size` bytes made of many tiny strings (the costly shape)."""
    head, tail = b'{"executorName":"x","jobId":1,"jobIds":[', b'"1"]}'
    n = (size - len(head) - len(tail)) // 4
    body = head + b'"1",' * n + tail
    return body + b" " * (size - len(body))


async def send_hostile(port: int, path: str, headers: dict[str, str], body: bytes) -> tuple[int, float]:
    """POST `body` the way an attacker would: keep writing until the server answers or hangs up.
    Returns (status, seconds until the status line arrived)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json"]
    head += [f"Content-Length: {len(body)}", *(f"{k}: {v}" for k, v in headers.items())]
    t0 = time.monotonic()
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
    answer = asyncio.create_task(reader.readline())
    try:
        for i in range(0, len(body), MiB):
            if answer.done():
                break
            writer.write(body[i : i + MiB])
            await asyncio.wait_for(writer.drain(), 60)
    except (ConnectionError, TimeoutError):
        pass  # the server hung up on us: fine, as long as it answered first
    try:
        line = await asyncio.wait_for(answer, 60)
    finally:
        writer.close()
    elapsed = time.monotonic() - t0
    assert line.startswith(b"HTTP/1.1 "), line
    return int(line.split()[1]), elapsed


def probe_healthz(url: str, stop: threading.Event, worst: list[float]) -> None:
    with httpx.Client(timeout=30) as c:
        while not stop.is_set():
            t0 = time.monotonic()
            c.get(f"{url}/healthz")
            worst.append(time.monotonic() - t0)
            stop.wait(0.05)


def test_unauthenticated_big_bodies_are_refused_before_they_are_read(server: Proc) -> None:
    body = token_heavy_body(ATTACK_BYTES)
    wrong_job = {"Authorization": "Bearer not-a-job-token", "X-Sourcegraph-Job-ID": "1"}
    wrong_job["X-Sourcegraph-Executor-Name"] = "e1"
    targets = [
        ("/.executors/queue/batches/heartbeat", {}),
        ("/.executors/queue/batches/dequeue", {"Authorization": "token-executor wrong-secret-0123456789"}),
        ("/.executors/queue/batches/uploadResult", {}),
        ("/.executors/queue/batches/uploadResult", wrong_job),
        ("/.executors/queue/batches/updateExecutionLogEntry", wrong_job),
        ("/.executors/git/github.com/acme/app/git-upload-pack", {}),
        ("/api/v1/queues/batches/jobs", {}),
        ("/api/v1/queues/batches/jobs", {"Authorization": "Bearer wrong-admin-token"}),
        ("/api/v1/queues/batches/jobs", {"Authorization": f"token-executor {SECRET}"}),
        ("/.executors/queue/batches/markComplete", {"Authorization": "Bearer"}),
    ]
    assert len(targets) == CONNECTIONS
    before = status_kb(server.pid, "VmRSS")
    stop, worst = threading.Event(), [0.0]
    prober = threading.Thread(target=probe_healthz, args=(server.url, stop, worst))
    prober.start()

    async def attack() -> list[tuple[int, float]]:
        return await asyncio.gather(*(send_hostile(server.port, p, h, body) for p, h in targets))

    try:
        results = asyncio.run(attack())
    finally:
        stop.set()
        prober.join(60)
    peak = status_kb(server.pid, "VmHWM")
    for (path, _), (status, elapsed) in zip(targets, results, strict=True):
        assert status in (401, 413), (path, status)
        assert elapsed < ANSWER_WITHIN, (path, elapsed)
    assert peak - before < RSS_GROWTH_MAX, f"server RSS {before >> 20} MiB -> peak {peak >> 20} MiB"
    assert max(worst) < PROBE_MAX, f"/healthz took {max(worst):.2f}s during the attack"


def test_small_routes_refuse_big_bodies_naming_the_bound(server: Proc) -> None:
    """Even with the executor token, a heartbeat of 2 MiB is refused (413) and the error names the bound."""
    body = token_heavy_body(2 * MiB)
    r = httpx.post(
        f"{server.url}/.executors/queue/batches/heartbeat",
        content=body,
        headers={"Authorization": f"token-executor {SECRET}", "Content-Type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 413 and str(MiB) in r.json()["error"], r.text


def test_authenticated_token_heavy_upload_does_not_freeze_the_loop(server: Proc) -> None:
    """A valid job token with 60 MiB of tiny JSON values: refused (413, naming the bound) without
    stalling the server's other requests; a 30 MiB diff (few values, under the result's 32 MiB diff
    bound) is still accepted."""
    admin = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=60)
    ex = httpx.Client(base_url=server.url, headers={"Authorization": f"token-executor {SECRET}"}, timeout=60)
    with admin, ex:
        assert admin.post(
            "/api/v1/queues/batches/jobs", json={"dockerSteps": [{"image": "alpine:3", "commands": ["true"]}]}
        ).is_success
        r = ex.post("/.executors/queue/batches/dequeue", json={"executorName": "e1", "version": "dev"})
        assert r.status_code == 200, r.text
        job = r.json()
        job_headers = {
            "Authorization": f"Bearer {job['token']}",
            "X-Sourcegraph-Job-ID": str(job["id"]),
            "X-Sourcegraph-Executor-Name": "e1",
            "Content-Type": "application/json",
        }
        stop, worst = threading.Event(), [0.0]
        prober = threading.Thread(target=probe_healthz, args=(server.url, stop, worst))
        prober.start()
        try:
            r = httpx.post(
                f"{server.url}/.executors/queue/batches/uploadResult",
                content=token_heavy_body(ATTACK_BYTES).replace(b'"jobId":1', f'"jobId":{job["id"]}'.encode()),
                headers=job_headers,
                timeout=120,
            )
        finally:
            stop.set()
            prober.join(60)
        assert r.status_code == 413 and "200000 values" in r.json()["error"], r.text[:300]
        assert max(worst) < PROBE_MAX, f"/healthz took {max(worst):.2f}s during the upload"
        diff = "+" + "x" * (30 * MiB) + "\n"
        r = httpx.post(
            f"{server.url}/.executors/queue/batches/uploadResult",
            json={"jobId": job["id"], "executorName": "e1", "exitCodes": [0], "diff": diff},
            headers=job_headers,
            timeout=120,
        )
        assert r.status_code == 204, r.text[:300]
        assert len(admin.get(f"/api/v1/jobs/{job['id']}/result").json()["diff"]) == len(diff)


def test_job_logs_cli_neutralises_terminal_escapes(server: Proc) -> None:
    """A job's log with an OSC 52 clipboard write, a title change and CSI: `corral job logs` prints
    none of them (piped or not); `--raw` prints them exactly."""
    hostile = "start \x1b]52;c;ZXZpbA==\x07 \x1b]0;owned\x1b\\ \x1b[2J\x9b31m end\n"
    admin = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=60)
    ex = httpx.Client(base_url=server.url, headers={"Authorization": f"token-executor {SECRET}"}, timeout=60)
    with admin, ex:
        assert admin.post(
            "/api/v1/queues/batches/jobs", json={"dockerSteps": [{"image": "a", "commands": ["x"]}]}
        )
        job = ex.post(
            "/.executors/queue/batches/dequeue", json={"executorName": "e1", "version": "dev"}
        ).json()
        r = ex.post(
            "/.executors/queue/batches/addExecutionLogEntry",
            json={
                "jobId": job["id"],
                "executorName": "e1",
                "key": "step\x1b]0;t\x07",
                "command": [],
                "out": hostile,
            },
        )
        assert r.status_code == 200, r.text
        ex.post("/.executors/queue/batches/markComplete", json={"jobId": job["id"], "executorName": "e1"})
    env = {**os.environ, "CORRAL_URL": server.url, "CORRAL_ADMIN_TOKEN": ADMIN}
    for follow in ([], ["--follow"]):
        out = subprocess.run(
            [CORRAL, "job", "logs", str(job["id"]), *follow], env=env, capture_output=True, timeout=60
        )
        assert out.returncode == 0, out.stderr
        text = out.stdout.decode()
        assert "start" in text and "end" in text and "ZXZpbA" not in text and "owned" not in text
        assert not any(c in text for c in "\x1b\x07\x9b\x9c\x9d"), (follow, text)
    raw = subprocess.run(
        [CORRAL, "job", "logs", str(job["id"]), "--raw"], env=env, capture_output=True, timeout=60
    )
    assert hostile.encode() in raw.stdout
