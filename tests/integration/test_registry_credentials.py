"""The sources of registry credentials without a registry: the executor user's ~/.docker/config.json
read safely (symlink followed, FIFO, size, ownership and mode refused with a clear problem), credential
helpers named, the precedence per registry, the seam without the user's config (for a VM runtime
pulling on the host), and what the redactor gets."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest

from corral.executor.plan import JobPlan
from corral.executor.runtimes.base import JobSpace, Step
from corral.executor.runtimes.docker.credentials import (
    USER_CONFIG_MAX_BYTES,
    job_credentials,
    read_user_config,
)
from corral.executor.runtimes.docker.runtime import DockerRuntime

REG = "127.0.0.1:5999"


def auth(user: str, pw: str) -> dict[str, dict[str, dict[str, str]]]:
    return {"auths": {REG: {"auth": base64.b64encode(f"{user}:{pw}".encode()).decode()}}}


def home_with(tmp_path: Path, text: str) -> Path:
    (tmp_path / ".docker").mkdir(parents=True, exist_ok=True)
    (tmp_path / ".docker" / "config.json").write_text(text)
    return tmp_path


def test_precedence_per_registry_and_the_seam_without_the_users_config(tmp_path: Path) -> None:
    other = "reg.example:443"
    user_cfg = {"auths": {REG: auth("home", "h")["auths"][REG], f"https://{other}/v2/": {"auth": "aG86aA=="}}}
    user = read_user_config(home_with(tmp_path, json.dumps(user_cfg)))
    assert user.problem is None and set(user.auths) == {REG, other}
    creds = job_credentials(auth("job", "j"), auth("exe", "e"), user)
    assert (creds[REG].source, creds[REG].shared) == ("job", False)
    assert (creds[other].source, creds[other].shared) == ("user", True)  # per registry, not per file
    creds = job_credentials(None, auth("exe", "e"), user)
    assert creds[REG].source == "executor" and creds[REG].shared
    assert job_credentials(auth("exe", "e"), auth("exe", "e"), user)[REG].shared  # the operator's again
    # a VM runtime pulling on the host: the same precedence without ~/.docker/config.json
    creds = job_credentials(None, None, user, user_config=False)
    assert creds == {}
    assert job_credentials(auth("job", "j"), None, user, user_config=False)[REG].source == "job"


def test_the_users_config_is_read_safely(tmp_path: Path) -> None:
    real = tmp_path / "real.json"
    real.write_text(json.dumps(auth("u", "p")))
    linked = tmp_path / "linked"
    (linked / ".docker").mkdir(parents=True)
    (linked / ".docker" / "config.json").symlink_to(real)
    assert REG in read_user_config(linked).auths  # the operator's dotfile link is followed

    assert read_user_config(tmp_path / "nobody").auths == {}  # none: fine, no problem
    assert read_user_config(tmp_path / "nobody").problem is None

    fifo = tmp_path / "fifo"
    (fifo / ".docker").mkdir(parents=True)
    os.mkfifo(fifo / ".docker" / "config.json")
    assert "not a regular file" in str(read_user_config(fifo).problem)  # no hang on a FIFO

    big = home_with(tmp_path / "big", " " * (USER_CONFIG_MAX_BYTES + 1))
    assert "larger than" in str(read_user_config(big).problem)

    loose = home_with(tmp_path / "loose", json.dumps(auth("u", "p")))
    (loose / ".docker" / "config.json").chmod(0o666)
    problem = read_user_config(loose)
    assert problem.auths == {} and "group/world-writable" in str(problem.problem)

    bad = home_with(tmp_path / "bad", '{"auths": {"%s": {"auth": "s3cret-not-base64"}}}' % REG)  # noqa: UP031
    problem = read_user_config(bad)
    assert problem.auths == {} and REG in str(problem.problem) and "s3cret" not in str(problem.problem)
    broken = home_with(tmp_path / "broken", '{"auths": {"x": {"auth": "s3cret')
    assert "not valid JSON" in str(read_user_config(broken).problem)
    assert "s3cret" not in str(read_user_config(broken).problem)


def test_credential_helpers_are_named_not_ignored(tmp_path: Path) -> None:
    home = home_with(
        tmp_path, json.dumps({"auths": {REG: {}}, "credHelpers": {"gcr.io": "gcloud"}, "credsStore": "pass"})
    )
    user = read_user_config(home)
    assert user.problem is None and user.auths == {}
    assert "credential helper 'pass'" in str(user.helper_note(REG))
    assert "credential helper 'gcloud'" in str(user.helper_note("gcr.io"))


async def test_check_reports_an_unusable_users_config_and_secrets_cover_every_form(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(home_with(tmp_path, "{not json")))
    rt = DockerRuntime()
    try:
        problems = await rt.check()
        assert any("registry credentials" in p and "not valid JSON" in p for p in problems), problems
    finally:
        await rt.aclose()
    monkeypatch.setenv("HOME", str(home_with(tmp_path, json.dumps(auth("home", "home-password")))))
    job = {
        "auths": {REG: {"username": "tok", "password": "job-password"}, "r2": {"identitytoken": "id-tok-1"}}
    }
    rt = DockerRuntime(executor_auth_config=auth("exe", "exe-password"))
    try:
        values = rt.secrets(JobPlan(job_id=1, queue="q", steps=(), registry_auth=job))
    finally:
        await rt.aclose()
    for secret in ("job-password", "tok:job-password", "id-tok-1", "exe-password", "exe:exe-password"):
        assert secret in values, values
    assert "tok" not in values and "exe" not in values  # user names alone are not masked


async def test_stage_uses_the_users_config_the_redactor_was_made_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The handler asks secrets() (for the redactor) before stage(): a ~/.docker/config.json changed
    in between must not give the job's pulls a credential the redactor does not know."""
    home = home_with(tmp_path / "home", json.dumps(auth("u", "first-password")))
    monkeypatch.setenv("HOME", str(home))
    root = tmp_path / "job"
    root.mkdir()
    space = JobSpace(job_id=7, queue="q", root=root, workspace=root / "workspace")
    st = Step(key="step.docker.0", kind="docker", index=0, image=f"{REG}/x:1", argv=("true",))
    plan = JobPlan(job_id=7, queue="q", steps=(st,))
    rt = DockerRuntime()
    try:
        assert "first-password" in rt.secrets(plan)
        home_with(home, json.dumps(auth("u", "second-password")))
        await rt.stage(space, plan)
        config = rt.docker_config(space)
        assert config is not None
        written = json.loads((config / "config.json").read_text())
        assert written == auth("u", "first-password")
        await rt.cleanup(space)
        assert not config.exists()
    finally:
        await rt.aclose()
