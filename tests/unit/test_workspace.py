"""The job workspace on the host: files in (never outside, never through links), declared outputs
out, the clone commands, and a diff computed with our own git dir that ignores whatever the job
wrote into the workspace's .git."""

from __future__ import annotations

import base64
import contextlib
import http.server
import os
import stat
import subprocess
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from corral.errors import RuntimeFailure
from corral.executor.runtimes.base import META_MOUNT, WORKSPACE_MOUNT
from corral.executor.workspace import host as ws
from corral.protocol import Job

GIT_ENV = {
    "PATH": "/usr/bin:/bin",
    "HOME": "/nonexistent",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.invalid",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.invalid",
}


def git(cwd: Path, *args: str) -> str:
    res = subprocess.run(["git", *args], cwd=cwd, env=GIT_ENV, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, (args, res.stderr)
    return res.stdout


# -- write_files -------------------------------------------------------------------------------
def test_write_files_writes_nested_files(tmp_path: Path):
    work = tmp_path / "workspace"
    work.mkdir()
    (work / "existing.txt").write_text("old")
    ws.write_files(
        work, {"a/b/c.txt": b"deep", "top.bin": b"\x00\xff", "existing.txt": b"new", "./d/./e.txt": b"e"}
    )
    assert (work / "a" / "b" / "c.txt").read_bytes() == b"deep"
    assert (work / "top.bin").read_bytes() == b"\x00\xff"
    assert (work / "existing.txt").read_bytes() == b"new"  # truncated and rewritten
    assert (work / "d" / "e.txt").read_bytes() == b"e"


@pytest.mark.parametrize("path", ["../x", "/abs", "a/../../x", "..", ".", "", "a\\..\\x", "a\x00b"])
def test_write_files_refuses_paths_outside_the_workspace(tmp_path: Path, path: str):
    work = tmp_path / "workspace"
    work.mkdir()
    with pytest.raises((ValueError, RuntimeFailure)):
        ws.write_files(work, {path: b"x"})
    assert not (tmp_path / "x").exists()
    assert list(work.iterdir()) == []


def test_write_files_refuses_a_directory_symlink_pointing_outside(tmp_path: Path):
    work, outside = tmp_path / "workspace", tmp_path / "outside"
    work.mkdir()
    outside.mkdir()
    (work / "link").symlink_to(outside)
    with pytest.raises(RuntimeFailure, match="symlink"):
        ws.write_files(work, {"link/f": b"pwned"})
    assert not (outside / "f").exists()
    # deeper: a link in the middle of the path, and one whose parents must first be created
    (work / "sub").mkdir()
    (work / "sub" / "link").symlink_to(outside)
    with pytest.raises(RuntimeFailure):
        ws.write_files(work, {"sub/link/new/f": b"pwned"})
    assert list(outside.iterdir()) == []


def test_write_files_refuses_a_file_symlink(tmp_path: Path):
    work, outside = tmp_path / "workspace", tmp_path / "outside"
    work.mkdir()
    outside.mkdir()
    (outside / "target").write_text("keep me")
    (work / "f").symlink_to(outside / "target")
    (work / "dangling").symlink_to(outside / "created-by-follow")
    with pytest.raises(RuntimeFailure):
        ws.write_files(work, {"f": b"pwned"})
    with pytest.raises(RuntimeFailure):
        ws.write_files(work, {"dangling": b"pwned"})
    assert (outside / "target").read_text() == "keep me"
    assert not (outside / "created-by-follow").exists()


def test_write_files_stops_at_the_first_bad_path_but_never_writes_outside(tmp_path: Path):
    work = tmp_path / "workspace"
    work.mkdir()
    with pytest.raises(ValueError):
        ws.write_files(work, {"ok.txt": b"1", "../escape.txt": b"2"})
    assert not (tmp_path / "escape.txt").exists()


# -- read_outputs ------------------------------------------------------------------------------
async def _chunks(*parts: bytes):
    for p in parts:
        yield p


async def test_write_stream_writes_the_chunks_and_makes_parents(tmp_path: Path):
    size = await ws.write_stream(tmp_path, "a/b/c.bin", _chunks(b"\x00\xff", b"A\n"), 100)
    assert size == 4 and (tmp_path / "a/b/c.bin").read_bytes() == b"\x00\xffA\n"


async def test_write_stream_stops_at_the_limit(tmp_path: Path):
    from corral.executor import safefs

    with pytest.raises(safefs.TooLarge, match="larger than 5 bytes"):
        await ws.write_stream(tmp_path, "big", _chunks(b"abc", b"def", b"never"), 5)
    assert (tmp_path / "big").read_bytes() == b"abc"  # nothing past the bound was written


async def test_write_stream_never_follows_a_link(tmp_path: Path):
    from corral.executor import safefs

    outside = tmp_path / "outside"
    outside.mkdir()
    work = tmp_path / "ws"
    work.mkdir()
    (work / "d").symlink_to(outside)
    (work / "f").symlink_to(outside / "target")
    for rel in ("d/x", "f"):
        with pytest.raises(safefs.UnsafePath):
            await ws.write_stream(work, rel, _chunks(b"x"), 10)
    with pytest.raises(ValueError, match="refusing to write outside of working directory"):
        await ws.write_stream(work, "../escape", _chunks(b"x"), 10)
    assert list(outside.iterdir()) == []


def test_take_file_reads_and_removes(tmp_path: Path):
    (tmp_path / "skip.json").write_text('{"nextStep": "step.1.pre"}')
    assert ws.take_file(tmp_path, "skip.json", 100) == b'{"nextStep": "step.1.pre"}'
    assert not (tmp_path / "skip.json").exists()
    assert ws.take_file(tmp_path, "skip.json", 100) is None


def test_take_file_refuses_links_fifos_directories_and_big_files(tmp_path: Path):
    from corral.executor import safefs

    secret = tmp_path / "secret"
    secret.write_text("host secret")
    work = tmp_path / "ws"
    work.mkdir()
    (work / "link").symlink_to(secret)
    os.mkfifo(work / "fifo")
    (work / "dir").mkdir()
    (work / "big").write_bytes(b"x" * 11)
    for name in ("link", "fifo", "dir", "big"):
        with pytest.raises(safefs.UnsafePath):
            ws.take_file(work, name, 10)
    assert (work / "link").is_symlink() and secret.read_text() == "host secret"
    with pytest.raises(safefs.UnsafePath):
        ws.take_file(work, "a/b", 10)


def test_read_outputs_returns_base64_of_regular_files(tmp_path: Path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "report.txt").write_bytes(b"report\n")
    (tmp_path / "bin").write_bytes(bytes(range(256)))
    files, problems = ws.read_outputs(tmp_path, ["out/report.txt", "bin"])
    assert problems == []
    assert base64.b64decode(files["out/report.txt"]) == b"report\n"
    assert base64.b64decode(files["bin"]) == bytes(range(256))


def test_read_outputs_reports_missing_files(tmp_path: Path):
    (tmp_path / "present.txt").write_text("here")
    files, problems = ws.read_outputs(tmp_path, ["missing.txt", "no/such/dir.txt", "present.txt"])
    assert list(files) == ["present.txt"]
    assert len(problems) == 2
    assert problems[0].startswith("output missing.txt:") and "No such file" in problems[0]
    assert problems[1].startswith("output no/such/dir.txt:") and "no such file" in problems[1].lower()


def test_read_outputs_refuses_symlinks(tmp_path: Path):
    work, outside = tmp_path / "workspace", tmp_path / "outside"
    work.mkdir()
    outside.mkdir()
    (outside / "secret").write_text("host secret")
    (work / "leak.txt").symlink_to(outside / "secret")
    (work / "dir").symlink_to(outside)
    files, problems = ws.read_outputs(work, ["leak.txt", "dir/secret", "../outside/secret"])
    assert files == {}
    assert len(problems) == 3
    assert all("host secret" not in p for p in problems)
    assert "symlink" in problems[0] and "symlink" in problems[1]
    assert "outside" in problems[2]


def test_read_outputs_refuses_directories(tmp_path: Path):
    (tmp_path / "adir").mkdir()
    files, problems = ws.read_outputs(tmp_path, ["adir"])
    assert files == {} and problems == ["output adir: not a regular file"]


def test_read_outputs_refuses_a_fifo_without_blocking(tmp_path: Path):
    """BUG (workspace.py read_outputs): os.open(O_RDONLY) of a FIFO blocks until a writer comes; a
    job that leaves a FIFO at a declared output path hangs the executor's upload (and the job)."""
    os.mkfifo(tmp_path / "out.fifo")
    result: list[tuple[dict[str, str], list[str]]] = []
    t = threading.Thread(target=lambda: result.append(ws.read_outputs(tmp_path, ["out.fifo"])), daemon=True)
    t.start()
    t.join(timeout=2)
    blocked = t.is_alive()
    if blocked:  # release the stuck reader so the test run can end
        fd = os.open(tmp_path / "out.fifo", os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        t.join(timeout=5)
    assert not blocked, "read_outputs blocked opening a FIFO"
    files, problems = result[0]
    assert files == {} and problems == ["output out.fifo: not a regular file"]


def test_read_outputs_refuses_files_over_the_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(ws, "MAX_OUTPUT_FILE", 10)
    (tmp_path / "big").write_bytes(b"x" * 11)
    (tmp_path / "small").write_bytes(b"x" * 10)
    files, problems = ws.read_outputs(tmp_path, ["big", "small"])
    assert list(files) == ["small"]
    assert problems == ["output big: larger than 10 bytes"]


# -- clone_commands ----------------------------------------------------------------------------
URL = "http://127.0.0.1:3080/.executors/git/acme/app"


def job(**fields: object) -> Job:
    return Job.model_validate({"id": 1, "repositoryName": "acme/app", "commit": "c0ffee", **fields})


def fetch_of(cmds: list[tuple[str, list[str]]]) -> list[str]:
    return next(argv for key, argv in cmds if key == "setup.git.fetch")


def test_clone_commands_default():
    cmds = ws.clone_commands(job(), URL)
    assert [k for k, _ in cmds] == [
        "setup.git.init",
        "setup.git.add-remote",
        "setup.git.disable-gc",
        "setup.git.fetch",
        "setup.git.checkout",
        "setup.git.set-remote",
    ]
    fetch = fetch_of(cmds)
    assert fetch[:4] == ["git", "-c", "protocol.version=2", "fetch"]
    assert fetch[-2:] == ["origin", "c0ffee"]
    # Sourcegraph's exact fetch (clone.go): no tag option at all unless fetchTags or a shallow clone
    assert fetch == [
        "git",
        "-c",
        "protocol.version=2",
        "fetch",
        "--progress",
        "--no-recurse-submodules",
        "origin",
        "c0ffee",
    ]
    assert dict(cmds)["setup.git.add-remote"] == ["git", "remote", "add", "origin", URL]
    assert dict(cmds)["setup.git.checkout"] == ["git", "checkout", "--quiet", "--force", "c0ffee"]
    # the server's URL does not stay in the workspace's git config
    assert dict(cmds)["setup.git.set-remote"] == ["git", "remote", "set-url", "origin", "acme/app"]
    # credentials are never on a command line
    assert not any("Authorization" in a or "token" in a.lower() for _k, argv in cmds for a in argv)


FETCH_HEAD = ["git", "-c", "protocol.version=2", "fetch", "--progress", "--no-recurse-submodules"]


@pytest.mark.parametrize(
    ("fields", "options"),
    [  # cmd/executor/internal/worker/workspace/clone.go, appendFetchArg in that order
        ({}, []),
        ({"shallowClone": True}, ["--no-tags", "--depth=1"]),
        ({"fetchTags": True}, ["--tags"]),
        ({"fetchTags": True, "shallowClone": True}, ["--tags", "--depth=1"]),
        ({"sparseCheckout": ["a/"]}, []),  # every blob: the diff needs the base (see clone_commands)
        ({"shallowClone": True, "sparseCheckout": ["a/"]}, ["--no-tags", "--depth=1"]),
    ],
)
def test_the_fetch_passes_exactly_sourcegraphs_options(fields: dict, options: list[str]):
    assert fetch_of(ws.clone_commands(job(**fields), URL)) == [*FETCH_HEAD, *options, "origin", "c0ffee"]


def test_clone_commands_sparse():
    cmds = ws.clone_commands(job(sparseCheckout=["keep/*", "docs/"]), URL)
    keys = [k for k, _ in cmds]
    assert keys.index("setup.git.fetch") < keys.index("setup.git.sparse-checkout-config")
    assert keys.index("setup.git.sparse-checkout-set") < keys.index("setup.git.checkout")
    assert "--filter=blob:none" not in fetch_of(cmds)  # the diff needs every base blob
    # the checkout speaks protocol v2 as Sourcegraph's does
    assert dict(cmds)["setup.git.checkout"] == [
        "git",
        "-c",
        "protocol.version=2",
        "checkout",
        "--quiet",
        "--force",
        "c0ffee",
    ]
    assert dict(cmds)["setup.git.sparse-checkout-config"] == [
        "git",
        "config",
        "--local",
        "core.sparseCheckout",
        "1",
    ]
    assert dict(cmds)["setup.git.sparse-checkout-set"] == [
        "git",
        "sparse-checkout",
        "set",
        "--no-cone",
        "--",
        "keep/*",
        "docs/",
    ]


def test_auth_env_keeps_headers_out_of_argv_and_config():
    env = ws.auth_env({"Authorization": "Bearer tok", "X-Sourcegraph-Job-ID": "7"})
    assert env == {
        "GIT_CONFIG_COUNT": "3",
        "GIT_CONFIG_KEY_0": "http.followRedirects",  # the headers never follow a redirect
        "GIT_CONFIG_VALUE_0": "false",
        "GIT_CONFIG_KEY_1": "http.extraHeader",
        "GIT_CONFIG_VALUE_1": "Authorization: Bearer tok",
        "GIT_CONFIG_KEY_2": "http.extraHeader",
        "GIT_CONFIG_VALUE_2": "X-Sourcegraph-Job-ID: 7",
    }


def _git_http_backend(root: Path, seen: list[tuple[str, str, str | None]], tag: str) -> type:
    """A request handler serving the bare repositories under `root` with `git http-backend` (git's
    real smart HTTP), recording (tag, method and path, Authorization) of every request."""

    class Backend(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _cgi(self, body: bytes = b"") -> None:
            seen.append((tag, f"{self.command} {self.path}", self.headers.get("Authorization")))
            path, _, query = self.path.partition("?")
            env = {
                "GIT_PROJECT_ROOT": str(root),
                "GIT_HTTP_EXPORT_ALL": "1",
                "PATH_INFO": path,
                "QUERY_STRING": query,
                "REQUEST_METHOD": self.command,
                "CONTENT_TYPE": self.headers.get("Content-Type", ""),
                "CONTENT_LENGTH": str(len(body)),
                "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
                "PATH": "/usr/bin:/bin",
            }
            done = subprocess.run(
                ["git", "http-backend"], input=body, env=env, capture_output=True, timeout=60
            )
            head, _, rest = done.stdout.partition(b"\r\n\r\n")
            self.send_response(200)
            for line in head.split(b"\r\n"):
                k, _, v = line.decode().partition(":")
                if k and k.lower() != "status":
                    self.send_header(k, v.strip())
            self.end_headers()
            self.wfile.write(rest)

        def do_GET(self) -> None:
            self._cgi()

        def do_POST(self) -> None:
            self._cgi(self.rfile.read(int(self.headers.get("Content-Length") or 0)))

    return Backend


async def test_the_clone_never_sends_the_token_to_where_a_redirect_points(tmp_path: Path) -> None:
    """The frontend's git route (127.0.0.1) redirects to another origin (127.0.0.2, a working git
    server): git must not follow, or it sends every http.extraHeader, the job token included, there
    (found by the review of issue 11, /tmp/review-exec/git_redirect2.py)."""
    from corral.executor.plan import CloneSpec, JobPlan
    from corral.executor.runtimes.base import JobSpace

    src = tmp_path / "src"
    src.mkdir()
    git(src, "init", "-q")
    (src / "f").write_text("x")
    git(src, "add", "f")
    git(src, "commit", "-qm", "m")
    sha = git(src, "rev-parse", "HEAD").strip()
    served = tmp_path / "srv"
    bare = served / ".executors" / "git" / "github.com" / "x" / "y"
    bare.parent.mkdir(parents=True)
    git(tmp_path, "clone", "-q", "--bare", str(src), str(bare))
    git(bare, "config", "uploadpack.allowAnySHA1InWant", "true")

    seen: list[tuple[str, str, str | None]] = []
    try:
        other = http.server.ThreadingHTTPServer(("127.0.0.2", 0), _git_http_backend(served, seen, "other"))
    except OSError as exc:  # 127.0.0.0/8 is all loopback on Linux
        pytest.fail(f"cannot listen on 127.0.0.2: {exc}")
    other_port = other.server_address[1]

    class Redirect(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            seen.append(("frontend", f"GET {self.path}", self.headers.get("Authorization")))
            self.send_response(302)
            self.send_header("Location", f"http://127.0.0.2:{other_port}{self.path}")
            self.end_headers()

    frontend = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirect)
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in (frontend, other)]
    for t in threads:
        t.start()
    try:
        workspace = ws.HostWorkspace(
            None,
            frontend_url=f"http://127.0.0.1:{frontend.server_address[1]}",
            frontend_password="executor-shared-secret-0123456789",
            executor_name="e",
        )
        root = tmp_path / "job"
        space = JobSpace(job_id=7, queue="batches", root=root, workspace=root / "workspace")
        await workspace.prepare(space)
        plan = JobPlan(
            job_id=7,
            queue="batches",
            steps=(),
            repository="github.com/x/y",
            commit=sha,
            clone=CloneSpec("github.com/x/y", sha),
        )
        logs: dict[str, bytearray] = {}

        @contextlib.asynccontextmanager
        async def open_log(key: str, argv: list[str]) -> AsyncIterator[_Log]:
            entry = _Log(logs.setdefault(key, bytearray()))
            yield entry

        with pytest.raises(RuntimeFailure, match=r"clone failed: setup\.git\.fetch"):
            await workspace.clone(space, plan, "JOBTOKEN-SECRET", open_log)
    finally:
        for s in (frontend, other):
            s.shutdown()
            s.server_close()
    # git asked the frontend with the token, got the redirect, and stopped there
    assert [(who, auth) for who, _req, auth in seen] == [("frontend", "Bearer JOBTOKEN-SECRET")], seen
    assert "returned error: 302" in logs["setup.git.fetch"].decode(), logs["setup.git.fetch"]


class _Log:
    def __init__(self, buf: bytearray) -> None:
        self.buf, self.exit_code = buf, None

    def write(self, data: bytes) -> None:
        self.buf += data


# -- the diff, with our own git dir -------------------------------------------------------------
def make_clone(tmp_path: Path, *, depth: int | None = None) -> tuple[Path, Path, str]:
    """A source repo with three commits, and a job root whose workspace is a clone of it."""
    src = tmp_path / "src"
    src.mkdir()
    git(src, "init", "-q", "-b", "main")
    for i in range(3):
        (src / "README.md").write_text(f"hello v{i}\n")
        (src / "keep.txt").write_text("keep\n")
        (src / "gone.txt").write_text("remove me\n")
        git(src, "add", "-A")
        git(src, "commit", "-qm", f"c{i}")
    commit = git(src, "rev-parse", "HEAD").strip()
    root = tmp_path / "job"
    root.mkdir()
    args = [
        "clone",
        "-q",
        *(["--depth", str(depth)] if depth else []),
        f"file://{src}",
        str(root / "workspace"),
    ]
    git(tmp_path, *args)
    return root, root / "workspace", commit


def make_hook(path: Path, marker: Path, *, passthrough: bool = False) -> Path:
    path.write_text(f"#!/bin/sh\ntouch {marker}\n" + ("cat\n" if passthrough else ""))
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def job_edits(repo: Path) -> None:
    (repo / "README.md").write_text("hello allowlist\n")
    (repo / "new.txt").write_text("brand new\n")
    (repo / "gone.txt").unlink()


def host_run(root: Path) -> ws.SandboxRun:
    """Runs the diff's git commands on the host, with the sandbox paths mapped back (tests only: the
    executor always runs them in the job's sandbox; tests/e2e/test_host_escapes.py covers that)."""

    async def run(argv, env, out) -> int:  # type: ignore[no-untyped-def]
        mapped = [
            a.replace(META_MOUNT, str(root / "meta.git")).replace(WORKSPACE_MOUNT, str(root / "workspace"))
            for a in argv
        ]
        return await ws.run(mapped, cwd=root, env=env, out=out)

    return run


async def diff_of(root: Path, commit: str, **kw: int) -> str:
    return await ws.diff(host_run(root), "", commit, **kw)


def check_diff(diff: str) -> None:
    assert "-hello v2" in diff and "+hello allowlist" in diff
    assert "new file mode" in diff and "+brand new" in diff
    assert "deleted file mode" in diff and "-remove me" in diff
    assert "keep.txt" not in diff


async def test_diff_of_a_job_that_changed_files(tmp_path: Path):
    root, repo, commit = make_clone(tmp_path)
    await ws.prepare_meta_git(root, repo, commit)
    job_edits(repo)
    (repo / "blob.bin").write_bytes(b"\x00\x01\x02binary")
    diff = await diff_of(root, commit)
    check_diff(diff)
    assert "GIT binary patch" in diff
    # git apply on a fresh checkout reproduces the job's tree
    fresh = tmp_path / "fresh"
    git(tmp_path, "clone", "-q", f"file://{tmp_path / 'src'}", str(fresh))
    (tmp_path / "patch").write_text(diff)
    git(fresh, "apply", "--binary", str(tmp_path / "patch"))
    assert (fresh / "README.md").read_text() == "hello allowlist\n"
    assert (fresh / "blob.bin").read_bytes() == b"\x00\x01\x02binary"
    assert not (fresh / "gone.txt").exists()


async def test_the_jobs_git_config_never_runs_on_the_host(tmp_path: Path):
    root, repo, commit = make_clone(tmp_path)
    await ws.prepare_meta_git(root, repo, commit)
    pwned_fsmonitor = tmp_path / "pwned-fsmonitor"
    pwned_filter = tmp_path / "pwned-filter"
    pwned_textconv = tmp_path / "pwned-textconv"
    fsmonitor = make_hook(tmp_path / "fsmonitor.sh", pwned_fsmonitor)
    clean = make_hook(tmp_path / "clean.sh", pwned_filter, passthrough=True)
    textconv = make_hook(tmp_path / "textconv.sh", pwned_textconv, passthrough=True)
    # What a hostile step can do to the workspace's .git and attributes:
    with open(repo / ".git" / "config", "a") as f:
        f.write(
            f'[core]\n\tfsmonitor = "{fsmonitor}"\n\thooksPath = {tmp_path}\n'
            f'[filter "evil"]\n\tclean = {clean}\n\tsmudge = {clean}\n\trequired = true\n'
            f'[diff "evil"]\n\ttextconv = {textconv}\n'
        )
    (repo / ".gitattributes").write_text("* filter=evil diff=evil\n")
    (repo / ".git" / "info").mkdir(exist_ok=True)
    (repo / ".git" / "info" / "exclude").write_text("new.txt\n")  # would hide a file from the diff
    job_edits(repo)
    # Control: plain git in the workspace does run the payloads.
    subprocess.run(["git", "status"], cwd=repo, env=GIT_ENV, capture_output=True, timeout=60)
    subprocess.run(["git", "add", "-A"], cwd=repo, env=GIT_ENV, capture_output=True, timeout=60)
    assert pwned_fsmonitor.exists() and pwned_filter.exists(), "the payloads do not work: bad test"
    git(repo, "reset", "-q")
    pwned_fsmonitor.unlink()
    pwned_filter.unlink()

    diff = await diff_of(root, commit)
    assert not pwned_fsmonitor.exists()
    assert not pwned_filter.exists()
    assert not pwned_textconv.exists()
    check_diff(diff)
    assert "+* filter=evil diff=evil" in diff  # the attributes file is just a new file
    assert ".git/" not in diff


async def test_diff_survives_a_job_that_destroys_its_git_dir(tmp_path: Path):
    root, repo, commit = make_clone(tmp_path)
    await ws.prepare_meta_git(root, repo, commit)
    job_edits(repo)
    subprocess.run(["rm", "-rf", str(repo / ".git")], check=True)
    (repo / ".git").write_text("gitdir: /nonexistent\n")  # and leaves a pointer somewhere else
    check_diff(await diff_of(root, commit))


async def test_diff_of_a_shallow_clone(tmp_path: Path):
    root, repo, commit = make_clone(tmp_path, depth=1)
    assert (repo / ".git" / "shallow").exists()
    await ws.prepare_meta_git(root, repo, commit)
    job_edits(repo)
    check_diff(await diff_of(root, commit))


async def test_no_change_is_an_empty_diff(tmp_path: Path):
    root, repo, commit = make_clone(tmp_path)
    await ws.prepare_meta_git(root, repo, commit)
    assert await diff_of(root, commit) == ""


async def test_prepare_meta_git_fails_in_plain_words_for_an_unknown_commit(tmp_path: Path):
    root, repo, _commit = make_clone(tmp_path)
    with pytest.raises(RuntimeFailure, match="git"):
        await ws.prepare_meta_git(root, repo, "0" * 40)


# -- run / remove_tree -------------------------------------------------------------------------
async def test_run_streams_merged_output_and_returns_the_exit_code(tmp_path: Path):
    chunks: list[bytes] = []
    rc = await ws.run(
        ["/bin/sh", "-c", "echo out; echo err >&2; exit 4"], cwd=tmp_path, env=ws.git_env(), out=chunks.append
    )
    assert rc == 4
    assert sorted(b"".join(chunks).split()) == [b"err", b"out"]


def test_remove_tree_never_follows_links(tmp_path: Path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("keep")
    root = tmp_path / "job"
    (root / "workspace").mkdir(parents=True)
    (root / "workspace" / "link").symlink_to(outside)
    ws.remove_tree(root)
    assert not root.exists()
    assert (outside / "keep").read_text() == "keep"
    ws.remove_tree(root)  # already gone: fine


async def test_a_diff_over_the_limit_fails_without_keeping_more_than_the_limit(tmp_path: Path):
    root, repo, commit = make_clone(tmp_path)
    await ws.prepare_meta_git(root, repo, commit)
    (repo / "big.txt").write_text("x" * 100_000 + "\n")
    with pytest.raises(RuntimeFailure, match="the diff is larger than the limit of 50000 bytes"):
        await diff_of(root, commit, limit=50_000)
    assert "big.txt" in await diff_of(root, commit, limit=200_000)


def test_bounded_sink_keeps_the_limit_and_counts_the_rest():
    sink = ws.Bounded(5)
    for chunk in (b"abc", b"defg", b"hij"):
        sink(chunk)
    assert bytes(sink.buf) == b"abcde" and sink.total == 10


def test_read_outputs_bounds_the_total_and_the_count(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(ws, "MAX_OUTPUTS_TOTAL", 10)
    monkeypatch.setattr(ws, "MAX_OUTPUTS", 3)
    for name in "abcd":
        (tmp_path / name).write_bytes(b"1234")
    files, problems = ws.read_outputs(tmp_path, ["a", "b", "c", "d"])
    assert sorted(files) == ["a", "b"]
    assert any("only the first 3" in p for p in problems)
    assert any(p.startswith("output c:") and "exceed 10 bytes" in p for p in problems)


def test_read_outputs_checks_the_size_before_reading_a_sparse_file(tmp_path: Path):
    with open(tmp_path / "sparse", "wb") as f:
        f.truncate(ws.MAX_OUTPUT_FILE + 1)
    files, problems = ws.read_outputs(tmp_path, ["sparse"])
    assert files == {} and "larger than" in problems[0]


def test_make_dirs_refuses_a_committed_symlink(tmp_path: Path):
    work, outside = tmp_path / "work", tmp_path / "outside"
    work.mkdir()
    outside.mkdir()
    (work / "repo").symlink_to(outside)
    with pytest.raises(RuntimeFailure, match="repo/sub"):
        ws.make_dirs(work, "repo/sub")
    assert list(outside.iterdir()) == []
    made = ws.make_dirs(work, "a/b")
    assert made == work / "a" / "b" and made.is_dir()


def test_sweep_removes_only_its_owners_dead_jobs(tmp_path: Path):
    names = [
        "ex.batches-1-1-aaaa",  # dead job of ours
        "ex.batches-2-1-bbbb",  # running
        "ex.code-intel-7-2-cccc",  # dead, queue name with a dash
        "other.batches-1-1-dddd",  # another executor's
        "ex-2.batches-3-1-eeee",  # a prefix that merely starts like ours
        "stray",
    ]
    for n in names:
        (tmp_path / n / "workspace").mkdir(parents=True)
    done = ws.sweep(tmp_path, "ex", lambda: {"batches-2"}, keep=False)
    assert sorted(done) == ["ex.batches-1-1-aaaa", "ex.code-intel-7-2-cccc"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(set(names) - set(done))
    # keep=True leaves unmounted directories alone
    assert ws.sweep(tmp_path, "other", lambda: set(), keep=True) == []
    assert (tmp_path / "other.batches-1-1-dddd").exists()
