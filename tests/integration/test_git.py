"""Git smart HTTP for executors: a job token fetches its job's commit, nothing else; no pushing."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from corral.protocol import EXECUTOR_NAME_HEADER, JOB_ID_HEADER
from tests.serverkit import EXECUTOR, EXECUTOR_SECRET, Kit, commit_file, git, job_headers, make_git_repo

REPO = "github.com/acme/app"
OTHER = "github.com/acme/other"


def auth_config(headers: dict[str, str]) -> list[str]:
    """`git -c http.extraHeader=...` options sending these headers."""
    out: list[str] = []
    for k, v in headers.items():
        out += ["-c", f"http.extraHeader={k}: {v}"]
    return out


def fetch(
    workdir: Path, url: str, commit: str, headers: dict[str, str]
) -> tuple[int, str]:  # (returncode, stderr)
    workdir.mkdir(parents=True, exist_ok=True)
    git(workdir, "init", "--quiet")
    res = git(
        workdir,
        *auth_config(headers),
        "-c",
        "protocol.version=2",
        "fetch",
        "--no-tags",
        "--no-recurse-submodules",
        url,
        commit,
        check=False,
    )
    return res.returncode, res.stderr


@pytest.fixture
def repos(kit: Kit, tmp_path: Path) -> dict[str, Any]:
    app = tmp_path / "src" / "app"
    first = make_git_repo(app, {"README.md": "app\n", "src/main.go": "package main\n"})
    second = commit_file(app, "CHANGELOG.md", "v2\n")
    commit_file(app, "LATER.md", "later\n")  # the branch tip moves on past the job's commit
    other = tmp_path / "src" / "other"
    make_git_repo(other, {"SECRET.md": "other\n"})
    assert kit.add_repo(REPO, app).status_code == 201
    assert kit.add_repo(OTHER, other).status_code == 201
    return {"app": app, "first": first, "second": second, "other": other}


@pytest.fixture
def job(kit: Kit, repos: dict[str, Any]) -> dict[str, Any]:
    kit.submit(repositoryName=REPO, commit=repos["second"])
    return kit.take()


def test_job_token_fetches_the_jobs_commit(
    kit: Kit, repos: dict[str, Any], job: dict[str, Any], tmp_path: Path
) -> None:
    assert job["repositoryName"] == REPO and job["commit"] == repos["second"]
    work = tmp_path / "work"
    code, err = fetch(work, f"{kit.url}/.executors/git/{REPO}", job["commit"], job_headers(job))
    assert code == 0, err
    git(work, "checkout", "--quiet", "--force", job["commit"])
    assert (work / "CHANGELOG.md").read_text() == "v2\n"
    assert (work / "src" / "main.go").read_text() == "package main\n"
    assert not (work / "LATER.md").exists()
    assert git(work, "rev-parse", "HEAD").stdout.strip() == repos["second"]


def test_executor_token_fetches_any_repository(kit: Kit, repos: dict[str, Any], tmp_path: Path) -> None:
    headers = {"Authorization": f"token-executor {EXECUTOR_SECRET}"}
    code, err = fetch(tmp_path / "w", f"{kit.url}/.executors/git/{REPO}", repos["first"], headers)
    assert code == 0, err


def test_job_token_does_not_open_another_repository(kit: Kit, job: dict[str, Any], tmp_path: Path) -> None:
    r = kit.anon.get(
        f"/.executors/git/{OTHER}/info/refs", params={"service": "git-upload-pack"}, headers=job_headers(job)
    )
    assert r.status_code == 403 and OTHER in r.json()["error"]
    r = kit.anon.post(
        f"/.executors/git/{OTHER}/git-upload-pack",
        content=b"0000",
        headers={**job_headers(job), "Content-Type": "application/x-git-upload-pack-request"},
    )
    assert r.status_code == 403
    code, err = fetch(tmp_path / "w", f"{kit.url}/.executors/git/{OTHER}", "HEAD", job_headers(job))
    assert code != 0 and "403" in err


def test_git_needs_a_token(kit: Kit, repos: dict[str, Any], job: dict[str, Any], tmp_path: Path) -> None:
    url = f"/.executors/git/{REPO}/info/refs"
    r = kit.anon.get(url, params={"service": "git-upload-pack"})
    assert r.status_code == 401
    r = kit.anon.get(
        url,
        params={"service": "git-upload-pack"},
        headers={**job_headers(job), "Authorization": "Bearer wrong-token"},
    )
    assert r.status_code == 401
    r = kit.anon.get(
        url,
        params={"service": "git-upload-pack"},
        headers={k: v for k, v in job_headers(job).items() if k != JOB_ID_HEADER},
    )
    assert r.status_code == 400
    r = kit.anon.get(
        url, params={"service": "git-upload-pack"}, headers={**job_headers(job), EXECUTOR_NAME_HEADER: "x"}
    )
    assert r.status_code == 403
    code, err = fetch(tmp_path / "w", f"{kit.url}/.executors/git/{REPO}", repos["second"], {})
    # git answers a 401 by asking for credentials, which prompts are disabled for.
    assert code != 0 and ("401" in err or "could not read Username" in err), err


def test_push_is_refused(kit: Kit, repos: dict[str, Any], job: dict[str, Any], tmp_path: Path) -> None:
    headers = job_headers(job)
    r = kit.anon.get(
        f"/.executors/git/{REPO}/info/refs", params={"service": "git-receive-pack"}, headers=headers
    )
    assert r.status_code == 403
    r = kit.anon.post(
        f"/.executors/git/{REPO}/git-receive-pack",
        content=b"0000",
        headers={**headers, "Content-Type": "application/x-git-receive-pack-request"},
    )
    assert r.status_code in (403, 404)
    # A real push, with the executor token even, does not get through.
    work = tmp_path / "clone"
    code, err = fetch(work, f"{kit.url}/.executors/git/{REPO}", repos["second"], headers)
    assert code == 0, err
    git(work, "checkout", "--quiet", "-b", "evil", "FETCH_HEAD")
    commit_file(work, "EVIL.md", "pwned\n")
    admin_like = {"Authorization": f"token-executor {EXECUTOR_SECRET}"}
    for hdrs in (headers, admin_like):
        res = git(
            work,
            *auth_config(hdrs),
            "push",
            f"{kit.url}/.executors/git/{REPO}",
            "evil:refs/heads/evil",
            check=False,
        )
        assert res.returncode != 0
    mirror = kit.srv.settings.repos_dir / f"{REPO}.git"
    assert git(mirror, "branch", "--list", "evil").stdout.strip() == ""


def test_other_git_paths_are_not_served(kit: Kit, job: dict[str, Any]) -> None:
    headers = job_headers(job)
    for path in ("HEAD", "objects/info/packs", "config", "info/refs/../../x"):
        r = kit.anon.get(f"/.executors/git/{REPO}/{path}", headers=headers)
        assert r.status_code in (403, 404), (path, r.status_code)
    r = kit.anon.get(f"/.executors/git/{REPO}/info/refs", headers=headers)  # dumb HTTP
    assert r.status_code == 403


def test_unknown_repository_with_the_executor_token(kit: Kit) -> None:
    r = kit.executor.get("/.executors/git/nope/nope/info/refs", params={"service": "git-upload-pack"})
    assert r.status_code == 404


def test_a_finished_jobs_token_no_longer_opens_git(
    kit: Kit, repos: dict[str, Any], job: dict[str, Any], tmp_path: Path
) -> None:
    """protocol.md: a job token is deleted by any mark call, so it cannot be used afterwards."""
    assert kit.job_call("batches", "markComplete", job, EXECUTOR).status_code == 204
    r = kit.anon.get(
        f"/.executors/git/{REPO}/info/refs", params={"service": "git-upload-pack"}, headers=job_headers(job)
    )
    assert r.status_code == 401
