"""Every channel a job's text reaches a producer by passes the redactor, in the forms of issue 12: the
step's log, the executor's error message, the producer API's job view (its spec and error). Through the
real handler and server (corral.testing.Harness with the FakeRuntime), no root, docker or sockets."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from corral.testing import FakeRuntime, Harness, fake_step
from tests.unit.redact_kit import leaks, percent_mix, wrapped

SECRET = "sgp_0123456789abcdef0123456789abcdef01234567"
WRAPPED = wrapped(base64.b64encode(b"user:" + SECRET.encode()), 20).decode()  # four lines
HEXED = SECRET.encode().hex(":")
MIXED = percent_mix(SECRET, lambda i: i % 2 == 0).decode()


@pytest.fixture
async def h(tmp_path: Path):
    async with Harness(tmp_path) as harness:
        yield harness


async def run(h: Harness, *steps, **spec):
    job_id = await h.submit(*steps, redactedValues={SECRET: "[SECRET]"}, **spec)
    handler = h.handler(FakeRuntime())
    job = await h.dequeue(handler.client)
    await handler.handle(job)
    return job_id, await h.job(job_id)


async def test_step_output_is_redacted_in_every_form_split_across_writes(h: Harness) -> None:
    printed = f"wrapped:\n{WRAPPED}\nhex: {HEXED}\nurl: {MIXED}\nupper: {SECRET.upper()}\n"
    job_id, view = await run(h, fake_step(FAKE_OUTPUT=printed, FAKE_CHUNK=5))
    assert view["state"] == "completed", view
    out = (await h.logs(job_id))[0]["out"]
    assert out.count("[SECRET]") == 4, out
    assert not leaks(SECRET, out.encode()), out


async def test_the_executor_error_message_is_redacted(h: Harness) -> None:
    _job_id, view = await run(h, fake_step(FAKE_ERROR=f"pull failed: bad credentials {HEXED} / {MIXED}"))
    assert view["state"] == "errored", view
    assert view["error"].startswith("pull failed: bad credentials "), view["error"]
    assert not leaks(SECRET, view["error"].encode()), view["error"]


async def test_the_job_view_hides_every_form_in_the_spec(h: Harness) -> None:
    job_id = await h.submit(
        fake_step(FAKE_OUTPUT=f"{WRAPPED} {HEXED} {MIXED}"),
        redactedValues={SECRET: "[SECRET]"},
    )
    view = await h.job(job_id)
    text = json.dumps(view)
    assert SECRET not in text
    assert not leaks(SECRET, json.dumps(view["spec"]["dockerSteps"]).encode().replace(b"\\n", b"\n")), text


async def test_declared_outputs_holding_the_secret_are_redacted(h: Harness) -> None:
    job_id, view = await run(
        h, fake_step(FAKE_WRITE=f"out/config.txt=token={SECRET}\n{WRAPPED}\n"), outputs=["out/config.txt"]
    )
    assert view["state"] == "completed", view
    r = await h.admin.get(f"/api/v1/jobs/{job_id}/result")
    assert r.status_code == 200, r.text
    content = base64.b64decode(r.json()["files"]["out/config.txt"])
    assert content.startswith(b"token=[SECRET]"), content
    assert not leaks(SECRET, content), content
    logs = await h.logs(job_id)
    note = [e for e in logs if e["key"] == "results.redacted"]
    assert len(note) == 1 and "output(s) out/config.txt" in note[0]["out"], logs
