"""The producer API never hands a job's secrets back, and bounds what a job may carry."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable

import pytest

from tests.serverkit import EXECUTOR_SECRET, SIMPLE_STEPS, Kit


def test_job_view_redacts_secrets_everywhere(kit: Kit) -> None:
    secret, other = "s3cr3t-Value-42", 'quote"d-secret'
    job = kit.submit(
        dockerSteps=[
            {
                "image": "alpine:3",
                "commands": [f"curl -H 'token: {secret}' https://x", f"echo {other}"],
                "env": [f"TOKEN={secret}", f"OTHER={other}"],
                "dir": "work",
            }
        ],
        cliSteps=[{"command": ["batch", "apply"], "env": [f"SRC_ACCESS_TOKEN={secret}"]}],
        files={
            "config.txt": {"content": f"token={secret}\n"},
            "bin.dat": {"contentBase64": base64.b64encode(b"\x00" + secret.encode()).decode()},
        },
        redactedValues={secret: "[TOKEN]", other: ""},
    )
    got = kit.take()  # the executor still gets everything it needs
    assert got["redactedValues"][secret] == "[TOKEN]" and f"TOKEN={secret}" in got["dockerSteps"][0]["env"]
    for text in [
        json.dumps(job),
        kit.admin.get(f"/api/v1/jobs/{job['id']}").text,
        kit.admin.get("/api/v1/jobs").text,
        kit.admin.post(f"/api/v1/jobs/{job['id']}/cancel").text,
    ]:
        assert secret not in text and "s3cr3t" not in text, text
        assert "quote" not in text, text
        assert base64.b64encode(secret.encode()).decode()[:12] not in text
    spec = kit.get_job(job["id"])["spec"]
    assert spec["dockerSteps"][0]["env"][0] == "TOKEN=[TOKEN]"
    assert spec["dockerSteps"][0]["commands"][1] == "curl -H 'token: [TOKEN]' https://x"
    assert spec["cliSteps"][0]["env"] == ["SRC_ACCESS_TOKEN=[TOKEN]"]
    assert spec["files"]["config.txt"]["size"] == len(f"token={secret}\n")
    assert "content" not in spec["files"]["bin.dat"]
    assert sorted(spec["redactedValues"].values()) == ["", "[TOKEN]"]


@pytest.mark.parametrize(
    ("fields", "bound"),
    [
        ({"redactedValues": {f"secret-{i}": "x" for i in range(1001)}}, "1000"),
        ({"redactedValues": {"k" * 600_000: "x", "j" * 600_000: "y"}}, "1048576 bytes"),
        ({"files": {f"f{i}": {"content": ""} for i in range(1001)}}, "1000"),
        (
            {"files": {"a": {"content": "x" * (17 << 20)}, "b": {"content": "y" * (17 << 20)}}},
            "33554432 bytes",
        ),
        ({"dockerSteps": SIMPLE_STEPS["dockerSteps"] * 101}, "100"),
        ({"outputs": [f"out/{i}" for i in range(1001)]}, "1000"),
    ],
)
def test_submit_bounds(kit: Kit, fields: dict[str, object], bound: str) -> None:
    r = kit.admin.post("/api/v1/queues/batches/jobs", json={**SIMPLE_STEPS, **fields})
    assert r.status_code == 400, r.text[:300]
    assert f"limit of {bound}" in r.json()["error"], r.text[:300]
    assert kit.admin.get("/api/v1/jobs").json() == []


def test_metrics_need_a_token_docs_are_off(make_kit: Callable[..., Kit]) -> None:
    kit = make_kit(metrics_token="prometheus-scrape-token")
    for headers in [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"token-executor {EXECUTOR_SECRET}"},
    ]:
        r = kit.anon.get("/metrics", headers=headers)
        assert r.status_code == 401 and "CORRAL_METRICS_TOKEN" in r.json()["error"], r.text
    assert kit.admin.get("/metrics").status_code == 200
    r = kit.anon.get("/metrics", headers={"Authorization": "Bearer prometheus-scrape-token"})
    assert r.status_code == 200 and "corral_executors_active" in r.text
    assert kit.anon.get("/openapi.json").status_code == 200  # the schema stays public
    assert kit.anon.get("/healthz").status_code == 200
    assert kit.anon.get("/docs").status_code == 404 and kit.anon.get("/redoc").status_code == 404


def test_metrics_public_and_docs_when_the_operator_says_so(make_kit: Callable[..., Kit]) -> None:
    kit = make_kit(metrics_public=True, docs=True)
    assert kit.anon.get("/metrics").status_code == 200
    assert kit.anon.get("/docs").status_code == 200


def test_a_failure_message_with_a_secret_is_redacted_in_every_view(kit: Kit) -> None:
    """An executor that does not redact (a plain Sourcegraph one, say) reports an error quoting a
    secret: the job view, the list and the log stream's last line show it replaced."""
    secret = "s3cr3t-in-error-77ab"
    job = kit.submit(**SIMPLE_STEPS, redactedValues={secret: "[TOKEN]"})
    got = kit.take()
    r = kit.job_call("batches", "markFailed", got, errorMessage=f"git said: bad token {secret}")
    assert r.status_code == 204, r.text
    stream = kit.admin.get(f"/api/v1/jobs/{job['id']}/logs/stream").text
    for text in [stream, kit.admin.get(f"/api/v1/jobs/{job['id']}").text, kit.admin.get("/api/v1/jobs").text]:
        assert secret not in text, text
        assert "bad token [TOKEN]" in text, text


def test_job_view_masks_registry_credentials_wherever_they_appear(kit: Kit) -> None:
    password = "reg1stry-Pass-Word-77"
    auth = base64.b64encode(f"ciuser:{password}".encode()).decode()
    job = kit.submit(
        dockerSteps=[{"image": "alpine:3", "commands": [f"echo {password}", f"echo {auth}"], "env": []}],
        dockerAuthConfig={"auths": {"127.0.0.1:5000": {"auth": auth}}},
    )
    for text in [
        json.dumps(job),
        kit.admin.get(f"/api/v1/jobs/{job['id']}").text,
        kit.admin.get("/api/v1/jobs").text,
    ]:
        assert password not in text and auth not in text, text
        assert "<redacted>" in text
    assert kit.take()["dockerAuthConfig"]["auths"]["127.0.0.1:5000"]["auth"] == auth  # the executor gets it
