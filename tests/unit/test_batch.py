"""corral.batch.plan: the whole spec is checked before anything is submitted."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from corral.batch import BatchSpec, plan
from corral.errors import ConfigError

GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@x.invalid", "GIT_COMMITTER_NAME": "t"}


def repo(path: Path) -> str:
    path.mkdir(parents=True)
    env = {**GIT_ENV, "GIT_COMMITTER_EMAIL": "t@x.invalid", "PATH": "/usr/bin:/bin", "HOME": str(path)}
    for argv in (["git", "init", "-q", "-b", "main"], ["git", "commit", "-q", "--allow-empty", "-m", "x"]):
        subprocess.run(argv, cwd=path, env=env, check=True, capture_output=True)
    return subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True, check=True
    ).stdout.strip()


def spec(*repos: dict[str, str], **extra: object) -> BatchSpec:
    return BatchSpec.model_validate(
        {"name": "t", "repositories": list(repos), "steps": [{"image": "a", "run": "true\nfalse\n"}], **extra}
    )


def test_a_good_spec_becomes_one_job_per_repository(tmp_path: Path) -> None:
    commit = repo(tmp_path / "api")
    repo(tmp_path / "web")
    planned = plan(
        spec({"path": "api", "commit": commit}, {"name": "acme/web", "path": "web"}, {"name": "acme/docs"}),
        tmp_path,
        {"acme/docs"},
    )
    assert [(p.repo, p.path) for p in planned] == [
        ("local/api", tmp_path / "api"),
        ("acme/web", tmp_path / "web"),
        ("acme/docs", None),
    ]
    job = planned[0].job
    assert job.repository_name == "local/api" and job.commit == commit and job.namespace == "t"
    assert job.docker_steps[0].commands[-2:] == ["true", "false"]  # the run lines, one command each


def test_every_problem_is_named_at_once(tmp_path: Path) -> None:
    repo(tmp_path / "api")
    (tmp_path / "plain").mkdir()
    (tmp_path / "b").mkdir()
    repo(tmp_path / "b" / "api")
    with pytest.raises(ConfigError) as err:
        plan(
            spec(
                {"path": "api", "commit": "no-such-branch"},
                {"path": "plain"},
                {"path": "missing"},
                {"name": "acme/docs"},
                {"path": "b/api"},
                timeout="soon",
            ),
            tmp_path,
            set(),
        )
    msg = err.value.message
    assert msg.startswith("the batch spec cannot run; nothing was submitted:")
    assert "repositories[0] (api): commit 'no-such-branch' does not exist" in msg
    assert "repositories[1] (plain): not a git repository" in msg
    assert "repositories[2] (missing): no such directory" in msg
    assert "repositories[3] (acme/docs): repository acme/docs is not registered on the server" in msg
    assert "repositories[4] (b/api): names repository local/api, as repositories[0] (api) does" in msg
    assert "timeout:" in msg


def test_a_local_run_knows_no_registered_names(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"give its path \(\{name: acme/docs, path: \.\.\.\}\)"):
        plan(spec({"name": "acme/docs"}), tmp_path, None)


def test_an_option_looking_commit_is_refused(tmp_path: Path) -> None:
    repo(tmp_path / "api")
    with pytest.raises(ConfigError, match="invalid commit '--output=/tmp/x'"):
        plan(spec({"path": "api", "commit": "--output=/tmp/x"}), tmp_path, None)
