"""corral.executor.plan: a Job as the ordered steps the runtimes run (pure)."""

from __future__ import annotations

import pytest

from corral.executor.plan import plan_job, step_env
from corral.executor.runtimes.base import SCRIPTS_MOUNT
from corral.protocol import Job


def job(**kw: object) -> Job:
    return Job.model_validate({"id": 7, "queue": "batches", "commit": "a" * 40, **kw})


def test_docker_then_cli_steps_with_keys_indexes_and_scripts() -> None:
    plan = plan_job(
        job(
            repositoryName="github.com/x/y",
            dockerSteps=[
                {"image": "alpine:3", "commands": ["echo hi", "ls"], "dir": "sub", "env": ["A=1", "B=x=y"]},
                {"key": "fmt", "image": "tools:1", "commands": ["fmt"]},
            ],
            cliSteps=[{"command": ["batch", "apply"], "env": ["C=3"]}],
        ),
        cli_path="/opt/corral",
    )
    assert [s.key for s in plan.steps] == ["step.docker.0", "step.docker.fmt", "step.src.0"]
    assert [s.index for s in plan.steps] == [0, 1, 2]
    first, second, cli = plan.steps
    assert (first.kind, first.image, first.dir) == ("docker", "alpine:3", "sub")
    assert first.argv == ("/bin/sh", f"{SCRIPTS_MOUNT}/step-0.sh")
    assert dict(first.env) == {"A": "1", "B": "x=y"}
    assert plan.scripts["step-0.sh"] == "set +e\nset -x\necho hi\nls\n"
    assert second.argv == ("/bin/sh", f"{SCRIPTS_MOUNT}/step-1.sh")
    assert (cli.kind, cli.image, cli.argv, dict(cli.env)) == (
        "cli",
        None,
        ("/opt/corral", "batch", "apply"),
        {"C": "3"},
    )
    assert plan.has_cli_steps and plan.clone is not None
    assert (plan.clone.repository_name, plan.clone.commit) == ("github.com/x/y", "a" * 40)


def test_a_job_without_repository_has_no_clone_and_carries_its_registry_auth() -> None:
    auth = {"auths": {"r.example": {"auth": "dXNlcjpwYXNz"}}}
    plan = plan_job(
        job(queue=None, dockerAuthConfig=auth, outputs=["out.txt"]), cli_path="c", default_queue="q"
    )
    assert plan.clone is None and plan.steps == () and not plan.has_cli_steps
    assert plan.queue == "q" and plan.outputs == ("out.txt",)
    assert plan.registry_auth == auth


def test_the_plan_is_pure() -> None:
    j = job(dockerSteps=[{"image": "a", "commands": ["true"]}])
    assert plan_job(j, cli_path="c") == plan_job(j, cli_path="c")


def test_step_env_last_wins() -> None:
    assert step_env(["A=1", "A=2", "B"]) == {"A": "2", "B": ""}


# -- skip.json (cmd/executor/internal/worker/runner/skip.go, util/batcheshelper.go) -----------------
def test_pre_step_keys_and_the_skip_target() -> None:
    from corral.executor.plan import is_pre_step, skip_target

    assert is_pre_step("step.docker.step.1.pre") and not is_pre_step("step.docker.step.1.run")
    assert not is_pre_step("step.docker.step.1.prep")
    assert skip_target("step.1.pre") == "step.docker.step.1.pre"  # runtime.CommandKey -> dockerKey


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b'{"nextStep": "step.1.pre"}', "step.1.pre"),  # skip_test.go's fixture
        (b'{"NEXTSTEP": "a", "other": [1]}', "a"),  # Go matches field names case-insensitively
        (b'{"nextStep": "a", "nextstep": "b"}', "b"),  # the last one wins
        (b'{"nextStep": null}', ""),
        (b"{}", ""),
        (b"null", ""),
        (b'  {"nextStep": ""}\n', ""),
    ],
)
def test_next_step_reads_skip_json_as_go_does(data: bytes, expected: str) -> None:
    from corral.executor.plan import next_step

    assert next_step(data) == expected


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"", "not JSON"),
        (b"[]", "a JSON list, not an object"),
        (b'"step.1.pre"', "a JSON str, not an object"),
        (b'{"nextStep": ["x"]}', "nextStep is a list, not a string"),
        (b'{"nextStep": "' + b"k" * 2000 + b'"}', "longer than 1024 characters"),
    ],
)
def test_next_step_refuses_what_go_would_not_decode(data: bytes, problem: str) -> None:
    from corral.executor.plan import next_step

    with pytest.raises(ValueError, match=problem):
        next_step(data)


def test_cli_steps_run_the_cli_path_given() -> None:
    job = Job.model_validate({"id": 1, "cliSteps": [{"command": ["batch-exec", "x"], "dir": "."}]})
    (step,) = plan_job(job, cli_path="/usr/local/bin/src").steps
    assert step.argv == ("/usr/local/bin/src", "batch-exec", "x") and step.key == "step.src.0"
    assert not plan_job(job, cli_path="src").skips  # a job with CLI steps never skips
