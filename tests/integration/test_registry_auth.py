"""Private registries against a real one: Debian's docker-registry with htpasswd on 127.0.0.1
(tests/registrykit.py), the docker runtime driven as the handler drives it (stage, prepare, run_step,
cleanup). Every source of credentials pulls; the precedence (job's dockerAuthConfig >
EXECUTOR_DOCKER_AUTH_CONFIG > the executor user's ~/.docker/config.json) decides between two sources
with different users where only one is right, in each order; a missing or wrong credential fails the
job clearly and its message is redacted; an image pulled with a job's credentials is not usable by a
later job without them, on the real registry. HOME is a temp dir in every test."""

from __future__ import annotations

import base64
import json
import random
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from corral.errors import RuntimeFailure
from corral.executor.plan import JobPlan
from corral.executor.redact import Redactor
from corral.executor.runtimes.base import JobSpace, Limits, StepResult
from corral.executor.runtimes.docker import DockerRuntime
from tests.integration.test_runtime_docker import IMAGE, OWNER, Output, step
from tests.registrykit import Registry, password, run_registry, untag

pytestmark = pytest.mark.docker

RIGHT, OTHER = "alice", "bob"  # two users of the registry


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with run_registry(tmp_path_factory.mktemp("registry"), {RIGHT: password(), OTHER: password()}) as reg:
        yield reg


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The executor's HOME (empty: no ~/.docker/config.json until a test writes one)."""
    h = tmp_path / "home"
    h.mkdir()
    monkeypatch.setenv("HOME", str(h))
    return h


def write_home_config(home: Path, config: Mapping[str, Any] | None) -> None:
    d = home / ".docker"
    d.mkdir(exist_ok=True)
    if config is None:
        (d / "config.json").unlink(missing_ok=True)
    else:
        (d / "config.json").write_text(json.dumps(config))


@pytest.fixture
def fresh_image(registry: Registry) -> Iterator[Callable[[], str]]:
    """Push corral/busybox:1 under a new repository (not local), as often as asked; untagged after."""
    pushed: list[str] = []

    def push() -> str:
        pushed.append(registry.push(IMAGE, f"jobs/t{random.randrange(16**8):08x}"))
        return pushed[-1]

    yield push
    for image in pushed:
        untag(image)


@pytest.fixture
async def runtimes(
    docker_available: None, registry: Registry, tmp_path: Path, home: Path
) -> AsyncIterator[Callable[..., DockerRuntime]]:
    made: list[DockerRuntime] = []

    def make(executor_auth: Mapping[str, Any] | None = None, state: str | None = None) -> DockerRuntime:
        rt = DockerRuntime(
            owner=OWNER,
            allowed_registries=[registry.address],
            executor_auth_config=executor_auth,
            state_dir=tmp_path / state if state else None,
            pull_timeout=60,
        )
        made.append(rt)
        return rt

    yield make
    for rt in made:
        await rt.aclose()


# The step that looks for the credentials inside its container: the config dir, its mount, the
# environment, and every regular file outside /proc, /sys, /dev (a control file proves the scan works).
def scan_script(space: JobSpace, needles: list[str]) -> str:
    grep = " ".join(f"-e {n}" for n in needles)
    return (
        f"test -e {space.root / 'docker'} && echo CONFIG-DIR-VISIBLE; "
        f"grep -q {space.root / 'docker'} /proc/self/mountinfo && echo CONFIG-DIR-MOUNTED; "
        f"env | grep {grep} -e DOCKER_CONFIG && echo IN-ENV; "
        f"echo {needles[0]} > /tmp/control; "
        r"find / \( -path /proc -o -path /sys -o -path /dev \) -prune -o -type f -print 2>/dev/null | "
        f"xargs grep -l {grep} 2>/dev/null; "
        "echo checked"
    )


_job_ids = iter(range(random.randrange(10**8, 9 * 10**8), 10**9))


async def run_job(
    rt: DockerRuntime,
    tmp_path: Path,
    image: str,
    registry_auth: Mapping[str, Any] | None = None,
    script: str | Callable[[JobSpace], str] = "echo ran",
) -> tuple[StepResult, Output, JobSpace]:
    """One job of one docker step, as the handler runs it; RuntimeFailure as run_step raises it."""
    job_id = next(_job_ids)
    root = tmp_path / f"job-{job_id}"
    (root / "workspace").mkdir(parents=True)
    root.chmod(0o700)
    space = JobSpace(
        job_id=job_id,
        queue="regtest",
        root=root,
        workspace=root / "workspace",
        limits=Limits(cpus=1, memory_bytes=256 * 1024**2, pids=256),
        kill_grace=1.0,
        owner=OWNER,
    )
    st = step(script(space) if callable(script) else script, image=image)
    plan = JobPlan(job_id=job_id, queue="regtest", steps=(st,), registry_auth=registry_auth)
    out = Output()
    try:
        await rt.stage(space, plan)
        await rt.prepare(space)
        result = await rt.run_step(space, st, out)
        # the config was for the pulls: gone once the job's images are there, before the job ends
        assert rt.docker_config(space) is None and not (root / "docker").exists()
        return result, out, space
    finally:
        await rt.cleanup(space)
        assert not (root / "docker").exists()


def plan_for(registry_auth: Mapping[str, Any] | None) -> JobPlan:
    return JobPlan(job_id=1, queue="regtest", steps=(), registry_auth=registry_auth)


# --- every source pulls, and no step ever sees the credentials ------------------------------------


@pytest.mark.parametrize("source", ["job", "executor", "home"])
async def test_each_source_pulls_and_the_step_never_sees_the_credentials(
    source: str,
    registry: Registry,
    runtimes: Callable[..., DockerRuntime],
    fresh_image: Callable[[], str],
    home: Path,
    tmp_path: Path,
) -> None:
    config = registry.config(RIGHT)
    rt = runtimes(executor_auth=config if source == "executor" else None)
    if source == "home":
        write_home_config(home, config)
    image = fresh_image()
    pw, auth = registry.users[RIGHT], registry.auth(RIGHT)
    result, out, _ = await run_job(
        rt, tmp_path, image, config if source == "job" else None, lambda s: scan_script(s, [pw, auth])
    )
    assert result.exit_code == 0, out.text
    assert out.text == "/tmp/control\nchecked\n", out.text  # only the control file holds the password
    assert await rt.api.image_inspect(image) is not None  # it was pulled, with these credentials


# --- precedence -------------------------------------------------------------------------------------

PAIRS = [("job", "executor"), ("job", "home"), ("executor", "home")]


@pytest.mark.parametrize(("higher", "lower"), PAIRS)
@pytest.mark.parametrize("right", ["higher", "lower"])
async def test_precedence_between_two_sources(
    higher: str,
    lower: str,
    right: str,
    registry: Registry,
    runtimes: Callable[..., DockerRuntime],
    fresh_image: Callable[[], str],
    home: Path,
    tmp_path: Path,
) -> None:
    """Two sources for the registry, different users, only one right: the higher source's is used,
    so the pull works exactly when the higher one is right."""
    good, bad = registry.config(RIGHT), registry.config(OTHER, "not-" + registry.users[OTHER])
    given = {higher: good if right == "higher" else bad, lower: bad if right == "higher" else good}
    if "home" in given:
        write_home_config(home, given["home"])
    rt = runtimes(executor_auth=given.get("executor"))
    creds = rt.registry_credentials(given.get("job"))
    assert creds[registry.address].source == ("user" if higher == "home" else higher)
    image = fresh_image()
    if right == "higher":
        result, out, _ = await run_job(rt, tmp_path, image, given.get("job"))
        assert (result.exit_code, out.text) == (0, "ran\n")
    else:
        with pytest.raises(RuntimeFailure) as err:
            await run_job(rt, tmp_path, image, given.get("job"))
        assert err.value.reason == "image", err.value
        assert "unauthorized" in err.value.message, err.value.message
        assert await rt.api.image_inspect(image) is None


# --- failures: clear, and redacted ------------------------------------------------------------------


async def test_a_missing_credential_fails_clearly(
    registry: Registry, runtimes: Callable[..., DockerRuntime], fresh_image: Callable[[], str], tmp_path: Path
) -> None:
    image = fresh_image()
    with pytest.raises(RuntimeFailure) as err:
        await run_job(runtimes(), tmp_path, image)
    assert err.value.reason == "image", err.value
    message = err.value.message
    assert message.startswith(f"image {image!r} not found: "), message
    assert "no basic auth credentials" in message, message
    assert f"no credentials for {registry.address} in any source" in message, message


async def test_a_credential_helper_in_the_home_config_is_named_in_the_error(
    registry: Registry,
    runtimes: Callable[..., DockerRuntime],
    fresh_image: Callable[[], str],
    home: Path,
    tmp_path: Path,
) -> None:
    write_home_config(home, {"auths": {registry.address: {}}, "credsStore": "secretservice"})
    rt = runtimes()
    with pytest.raises(RuntimeFailure) as err:
        await run_job(rt, tmp_path, fresh_image())
    assert "credential helper 'secretservice'" in err.value.message, err.value.message
    assert "not supported" in err.value.message
    assert await rt.check() == []  # a helper is a warning, not a reason to stop the executor


async def test_a_wrong_credential_fails_clearly_and_the_message_is_redacted(
    registry: Registry, runtimes: Callable[..., DockerRuntime], fresh_image: Callable[[], str], tmp_path: Path
) -> None:
    wrong = password()
    job_auth = registry.config(RIGHT, wrong)
    rt = runtimes()
    # the wrong password is also the tag, so the error text holds it: the redactor must hide it
    image = fresh_image().rsplit(":", 1)[0] + f":{wrong}"
    with pytest.raises(RuntimeFailure) as err:
        await run_job(rt, tmp_path, image, job_auth)
    assert err.value.reason == "image", err.value
    message = err.value.message
    assert message.startswith(f"image {image!r} not found: unauthorized"), message
    assert "with the credentials of the job's dockerAuthConfig" in message, message
    redacted = Redactor({}, rt.secrets(plan_for(job_auth))).redact_text(message)
    auth = registry.auth(RIGHT, wrong)
    for form in (wrong, auth, f"{RIGHT}:{wrong}", base64.b64encode(f"{RIGHT}:{wrong}".encode()).decode()):
        assert form not in redacted, redacted
    assert "unauthorized" in redacted and registry.address in redacted


# --- the image cache across jobs, on the real registry ----------------------------------------------


async def test_an_image_pulled_with_job_credentials_needs_them_again(
    registry: Registry,
    runtimes: Callable[..., DockerRuntime],
    fresh_image: Callable[[], str],
    home: Path,
    tmp_path: Path,
) -> None:
    good, wrong = registry.config(RIGHT), registry.config(RIGHT, "wrong-" + registry.users[RIGHT])
    image = fresh_image()
    rt = runtimes(state="state")
    result, out, _ = await run_job(rt, tmp_path, image, good)  # job A: its own credentials
    assert (result.exit_code, out.text) == (0, "ran\n")
    assert await rt.api.image_inspect(image) is not None  # local from now on
    for job_auth in (None, wrong):  # job B: none, then wrong ones: the registry refuses
        with pytest.raises(RuntimeFailure) as err:
            await run_job(rt, tmp_path, image, job_auth)
        assert err.value.reason == "image" and "unauthorized" in err.value.message, err.value
        assert err.value.message.startswith(f"image {image!r} not found: "), err.value.message
    # job C: no credentials of its own, the executor's (EXECUTOR_DOCKER_AUTH_CONFIG): the registry agrees
    rt2 = runtimes(executor_auth=good, state="state")
    result, out, _ = await run_job(rt2, tmp_path, image)
    assert (result.exit_code, out.text) == (0, "ran\n")

    # the same with the executor user's ~/.docker/config.json as the executor-wide credentials
    image2 = fresh_image()
    rt3 = runtimes(state="state3")
    assert (await run_job(rt3, tmp_path, image2, good))[0].exit_code == 0
    with pytest.raises(RuntimeFailure) as err:
        await run_job(rt3, tmp_path, image2)
    assert "unauthorized" in err.value.message, err.value
    write_home_config(home, good)  # read per job: no restart needed
    assert (await run_job(rt3, tmp_path, image2))[0].exit_code == 0


@pytest.mark.parametrize("source", ["executor", "home"])
async def test_an_image_pulled_with_the_operators_credentials_is_for_every_job(
    source: str,
    registry: Registry,
    runtimes: Callable[..., DockerRuntime],
    fresh_image: Callable[[], str],
    home: Path,
    tmp_path: Path,
) -> None:
    good = registry.config(RIGHT)
    image = fresh_image()
    if source == "home":
        write_home_config(home, good)
    rt = runtimes(executor_auth=good if source == "executor" else None, state="state")
    assert (await run_job(rt, tmp_path, image))[0].exit_code == 0
    # a job that gives the operator's own credentials again is not job-scoped either
    assert (await run_job(rt, tmp_path, image, good))[0].exit_code == 0
    # the operator's credentials gone: the local image is still every job's (nothing job-scoped)
    write_home_config(home, None)
    rt2 = runtimes(state="state")
    result, out, _ = await run_job(rt2, tmp_path, image)
    assert (result.exit_code, out.text) == (0, "ran\n")
