"""podside, the program of a kubernetes job's setup-workspace and main containers, and the image
corral/corral:1 it runs in.

- collect runs inside the real image (docker run --network none, read-only root, uid 1000, no
  capabilities) on a workspace and meta.git the test made; its decoded stream is what the host's
  own functions make of the same workspace; a hostile workspace (links, FIFOs, huge files, a planted
  git dir with hooks and config) gets the host's answers and runs none of its code;
- the executor's decoder refuses truncated, forged and oversized streams;
- clone runs on the host (it is plain Python) against a real corral server on 127.0.0.1: the token
  is in no process's argv while it runs and in no file of the workspace or the git dirs.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import stat
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral import __version__
from corral.errors import Reason, RuntimeFailure, StepFailed
from corral.executor.plan import JobPlan, plan_job
from corral.executor.runtimes.kubernetes import podside
from corral.executor.runtimes.kubernetes.podside import (
    LINE,
    MAX_RESULTS_BYTES,
    CloneLog,
    MalformedResults,
    ResultsDecoder,
    decode_results,
    encode_results,
    pod_secret,
)
from corral.executor.workspace.base import Results
from corral.executor.workspace.host import (
    MAX_OUTPUT_FILE,
    capture,
    clone_commands,
    collect_results,
    diff,
    prepare_meta_git,
)
from corral.protocol import Job
from tests.conftest import docker_ok, require
from tests.e2e.localkit import cmdlines
from tests.serverkit import EXECUTOR, Kit, commit_file, git, make_git_repo

ROOT = Path(__file__).resolve().parents[2]
IMAGE = "corral/corral:1"
BUILD_TIMEOUT = 900  # seconds for scripts/build-images.sh (it copies ~300 MB into the image)
RUN_TIMEOUT = 180  # seconds for one container run
UID = 1000
CLONE_TIMEOUT = 120  # seconds for podside clone on the host


# --- the image ---------------------------------------------------------------------------------


def _image_inputs() -> str:
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "corral-image.py"), "digest"],
        check=True, capture_output=True, text=True, timeout=120,
    )
    return out.stdout.strip()


def _image_label() -> str | None:
    done = subprocess.run(
        ["docker", "image", "inspect", "-f", '{{index .Config.Labels "dev.corral.image.inputs"}}', IMAGE],
        capture_output=True, text=True, timeout=60,
    )
    return done.stdout.strip() if done.returncode == 0 else None


@pytest.fixture(scope="module")
def image() -> str:
    """corral/corral:1 built from the current tree (build-images.sh rebuilds it only when stale)."""
    require(docker_ok(), "Docker Engine is not reachable (run scripts/setup.sh)")
    if _image_label() != _image_inputs():
        done = subprocess.run(
            ["bash", str(ROOT / "scripts" / "build-images.sh")],
            cwd=ROOT, capture_output=True, text=True, timeout=BUILD_TIMEOUT,
        )
        assert done.returncode == 0, done.stdout + done.stderr
    assert _image_label() is not None, f"{IMAGE} was not built"
    return IMAGE


def in_image(
    image: str, *argv: str, mounts: tuple[tuple[Path, str, bool], ...] = ()
) -> subprocess.CompletedProcess[bytes]:
    """Run argv in the image as a pod's main container would: no network, read-only root, uid 1000,
    every capability dropped, no new privileges."""
    cmd = [
        "docker", "run", "--rm", "--network", "none", "--read-only", "--user", f"{UID}:{UID}",
        "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--pids-limit", "256",
    ]
    for host, target, ro in mounts:
        cmd += ["--mount", f"type=bind,source={host},target={target}" + (",readonly" if ro else "")]
    return subprocess.run([*cmd, image, *argv], capture_output=True, timeout=RUN_TIMEOUT)


def test_image_runs_corral_and_git_as_uid_1000_with_a_read_only_root(image: str) -> None:
    done = in_image(image, "corral", "version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().strip() == __version__
    script = "id -u; git --version; touch /probe 2>/dev/null && echo writable; true"
    done = in_image(image, "sh", "-c", script)
    assert done.returncode == 0, done.stderr
    uid, version, *rest = done.stdout.decode().split("\n")
    assert uid == str(UID) and version.startswith("git version 2.") and "writable" not in rest
    # only runtime dependencies: the test tools stay out of the image
    done = in_image(image, "python3", "-c", "import importlib.util as u; print([m for m in "
                    "('pytest', 'mypy', 'ruff', 'hypothesis', 'kmock', 'httpx', 'kubernetes_asyncio') "
                    "if u.find_spec(m)])")
    assert done.returncode == 0, done.stderr
    assert done.stdout.decode().strip() == "['httpx', 'kubernetes_asyncio']"


# --- a workspace as podside clone leaves it ------------------------------------------------------


async def _workspace(tmp_path: Path, files: dict[str, str] | None = None) -> tuple[Path, Path, str]:
    """(workspace, meta.git, commit): a clone of a fresh repository with our git dir for the diff,
    made with the host's own prepare_meta_git."""
    origin = tmp_path / "origin"
    files = files or {"README.md": "hello\n", "src/app.py": "print(1)\n", "gone.txt": "x\n"}
    commit = make_git_repo(origin, files)
    job = tmp_path / "job"
    job.mkdir()
    ws = job / "workspace"
    git(tmp_path, "clone", "--quiet", str(origin), str(ws))
    await prepare_meta_git(job, ws, commit)
    return ws, job / "meta.git", commit


def _chown(top: Path, uid: int) -> None:
    os.chown(top, uid, uid, follow_symlinks=False)
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            os.chown(os.path.join(dirpath, name), uid, uid, follow_symlinks=False)


def _config(tmp_path: Path, plan: JobPlan) -> Path:
    """The Secret's job.json (as pod_secret makes it) in a directory of its own."""
    _, items = pod_secret(plan, token="unused", executor_name=EXECUTOR, frontend_url="http://127.0.0.1:9")
    d = tmp_path / "config"
    d.mkdir()
    (d / "job.json").write_bytes(items["job.json"])
    os.chmod(d, 0o755)
    return d


def _plan(commit: str, outputs: tuple[str, ...] = (), repository: str = "github.com/acme/app") -> JobPlan:
    job = Job(id=7, queue="batches", repositoryName=repository, commit=commit, outputs=list(outputs) or None)
    return plan_job(job, cli_path="corral")


def _collect_in_image(image: str, tmp_path: Path, ws: Path, meta: Path, plan: JobPlan) -> bytes:
    config = _config(tmp_path, plan)
    _chown(ws, UID)
    _chown(meta, UID)
    done = in_image(
        image, *podside.COLLECT_COMMAND,
        "--config", "/.corral-job/job.json", "--workspace", "/data", "--git-dir", "/.corral-meta.git",
        mounts=((ws, "/data", False), (meta, "/.corral-meta.git", False), (config, "/.corral-job", True)),
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done.stdout


async def _host_results(ws: Path, meta: Path, plan: JobPlan) -> Results:
    """What the host makes of the workspace: its diff and read_outputs, git run right here."""

    async def here(argv: Any, env: Any, out: Any) -> int:
        from corral.executor.workspace.host import run

        return await run(list(argv), cwd=None, env=env, out=out)

    text = await diff(here, plan.repository_directory, plan.commit, workspace=str(ws), meta=str(meta))
    res = await collect_results(ws, plan.outputs, None)
    return Results(diff=text, files=res.files, problems=res.problems, over_limit=res.over_limit)


async def test_collect_in_the_image_gives_what_the_host_makes(image: str, tmp_path: Path) -> None:
    ws, meta, commit = await _workspace(tmp_path)
    # what the steps did: change, add (text and binary), delete, and leave declared outputs
    (ws / "README.md").write_text("hello, world\n")
    (ws / "new dir").mkdir()
    (ws / "new dir" / "ünïcode.txt").write_text("fresh\n")
    (ws / "blob.bin").write_bytes(bytes(range(256)) * 64)
    (ws / "gone.txt").unlink()
    (ws / "out").mkdir()
    (ws / "out" / "index.scip").write_bytes(os.urandom(200_000))  # spans many body lines
    (ws / "out" / "empty").write_bytes(b"")
    plan = _plan(commit, ("out/index.scip", "out/empty", "missing.txt"))
    host = await _host_results(ws, meta, plan)
    assert "hello, world" in host.diff and "GIT binary patch" in host.diff and "deleted file" in host.diff
    assert host.problems == ("output missing.txt: No such file or directory in the workspace",)
    got = decode_results(_collect_in_image(image, tmp_path, ws, meta, plan))
    assert got == host
    assert base64.b64decode(got.files["out/index.scip"]) == (ws / "out" / "index.scip").read_bytes()
    assert got.files["out/empty"] == ""


HOOKS = ("pre-commit", "post-index-change", "pre-auto-gc", "fsmonitor-watchman", "reference-transaction")


async def test_collect_in_the_image_on_a_hostile_workspace(image: str, tmp_path: Path) -> None:
    ws, meta, commit = await _workspace(tmp_path)
    os.symlink("/etc/passwd", ws / "leak")
    os.symlink("/etc", ws / "etc-dir")
    os.mkfifo(ws / "fifo")
    with open(ws / "huge", "wb") as f:  # sparse: over the bound without costing disk
        f.truncate(MAX_OUTPUT_FILE + 1)
    (ws / "fine.txt").write_text("kept\n")
    # A git dir planted where a step can reach it: hooks, fsmonitor, a filter and an alternate
    # object store, in the workspace's .git and in a nested repository; none may run or be read.
    hook = "#!/bin/sh\ntouch /data/pwned-$(basename $0)\n"
    for gitdir in (ws / ".git", ws / "nested" / ".git"):
        (gitdir / "hooks").mkdir(parents=True, exist_ok=True)
        for name in HOOKS:
            (gitdir / "hooks" / name).write_text(hook)
            os.chmod(gitdir / "hooks" / name, 0o755)
        (gitdir / "config").write_text(
            "[core]\n\tfsmonitor = touch /data/pwned-fsmonitor\n\thooksPath = hooks\n"
            "\tsshCommand = touch /data/pwned-ssh\n[filter \"x\"]\n\tclean = touch /data/pwned-filter\n"
            "[diff \"x\"]\n\ttextconv = touch /data/pwned-textconv\n"
        )
    (ws / "nested" / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (ws / ".gitattributes").write_text("* filter=x diff=x\n")
    plan = _plan(commit, ("leak", "etc-dir/passwd", "fifo", "huge", "fine.txt"))
    got = decode_results(_collect_in_image(image, tmp_path, ws, meta, plan))
    assert got.files == {"fine.txt": base64.b64encode(b"kept\n").decode()}
    problems = dict(p.split(": ", 1) for p in got.problems)
    assert problems["output leak"] == "refusing to follow the symlink 'leak'"
    assert problems["output etc-dir/passwd"].startswith("refusing to follow 'etc-dir'")
    assert problems["output fifo"] == "not a regular file"
    assert problems["output huge"] == f"larger than {MAX_OUTPUT_FILE} bytes"
    assert "root:x:0:0" not in got.diff  # the link is in the diff as a link, never its target's text
    assert "+++ b/fine.txt" in got.diff and "+++ b/.gitattributes" in got.diff
    assert not [p.name for p in ws.iterdir() if p.name.startswith("pwned")]


async def test_collect_in_the_image_reports_a_diff_over_its_limit_as_the_host_does(
    image: str, tmp_path: Path
) -> None:
    ws, meta, commit = await _workspace(tmp_path)
    line = (hashlib.sha256(b"x").hexdigest() * 2 + "\n").encode()
    with open(ws / "big.txt", "wb") as f:  # a 33 MiB text file: its diff passes the 32 MiB bound
        for _ in range(33 * 1024 * 1024 // len(line) + 1):
            f.write(line)
    with pytest.raises(RuntimeFailure) as caught:
        decode_results(_collect_in_image(image, tmp_path, ws, meta, _plan(commit)))
    assert caught.value.reason is Reason.DIFF
    assert caught.value.message == f"the diff is larger than the limit of {32 * 1024 * 1024} bytes"


# --- the decoder -------------------------------------------------------------------------------


def _frame(results: Results, diff_bytes: bytes = b"") -> bytes:
    out = bytearray()
    encode_results(out.extend, diff_bytes, results)
    return bytes(out)


SAMPLE = Results(
    diff="",
    files={
        "a.txt": base64.b64encode(b"alpha\n").decode(),
        "d/b.bin": base64.b64encode(os.urandom(9000)).decode(),
    },
    problems=("output c: No such file or directory in the workspace",),
)
SAMPLE_DIFF = b"diff --git a/x b/x\n--- a/x\n+++ b/x\n@@ -1 +1 @@\n-a\n+\xff\n"


def test_round_trip_and_chunking() -> None:
    data = _frame(SAMPLE, SAMPLE_DIFF)
    want = Results(
        diff=SAMPLE_DIFF.decode("utf-8", "replace"), files=SAMPLE.files, problems=SAMPLE.problems
    )
    assert decode_results(data) == want
    assert decode_results(data[i : i + 7] for i in range(0, len(data), 7)) == want
    # what an interpreter may print before the records is skipped
    assert decode_results(b"Warning: something\n" + data) == want
    assert decode_results(_frame(Results())) == Results()


def test_truncated_streams_are_refused() -> None:
    data = _frame(SAMPLE, SAMPLE_DIFF)
    for cut in range(0, len(data), max(1, len(data) // 97)):
        with pytest.raises(MalformedResults):
            decode_results(data[:cut])
    with pytest.raises(MalformedResults, match="truncated"):
        decode_results(data[: data.rindex(b'{"record": "end"')])


def _lines(data: bytes) -> list[bytes]:
    return data.split(b"\n")


def _forge(data: bytes, index: int, line: bytes) -> bytes:
    lines = _lines(data)
    lines[index] = line
    return b"\n".join(lines)


def test_forged_streams_are_refused() -> None:
    data = _frame(SAMPLE, SAMPLE_DIFF)
    lines = _lines(data)
    header_at = {json.loads(line)["record"]: i for i, line in enumerate(lines) if line.startswith(b"{")}
    diff_h = json.loads(lines[header_at["diff"]])
    body = lines[header_at["diff"] + 1]
    flipped = bytes([body[0] ^ 1]) + body[1:]
    cases = {
        "a body byte changed": _forge(data, header_at["diff"] + 1, flipped),
        "a wrong sha256": _forge(
            data, header_at["diff"], json.dumps({**diff_h, "sha256": "0" * 64}).encode()
        ),
        "a size that does not match": _forge(
            data, header_at["diff"], json.dumps({**diff_h, "size": diff_h["size"] + 1}).encode()
        ),
        "an extra record after the end": data + b'{"record":"problem","text":"x"}\n',
        "the end miscounting": _forge(data, header_at["end"], b'{"record": "end", "records": 99}'),
        "an unknown record": _forge(data, header_at["problem"], b'{"record":"shell","cmd":"id"}'),
        "an output leaving the workspace": data.replace(b'"path":"a.txt"', b'"path":"../a.txt"'),
        "a duplicate output": data.replace(b'"path":"d/b.bin"', b'"path":"a.txt"'),
        "a header that is not JSON": _forge(data, header_at["problem"], b"not json"),
        "a CR in a body line": _forge(data, header_at["diff"] + 1, body + b"\r"),
        "a body line not base64": _forge(data, header_at["diff"] + 1, b"!" * len(body)),
        "an error record after results": data.replace(
            lines[header_at["end"]],
            b'{"record":"error","kind":"runtime","reason":"diff","message":"x"}\n' + lines[header_at["end"]],
        ),
    }
    for what, forged in cases.items():
        with pytest.raises(MalformedResults):
            decode_results(forged)
            pytest.fail(f"{what}: decoded")


def _raw_record(kind: str, data: bytes, packed: bytes, **extra: Any) -> bytes:
    sha = hashlib.sha256(data).hexdigest()
    head = {"record": kind, **extra, "size": len(data), "zsize": len(packed), "sha256": sha}
    text = base64.b64encode(packed)
    body = b"".join(text[i : i + LINE] + b"\n" for i in range(0, len(text), LINE))
    return json.dumps(head).encode() + b"\n" + body


def test_oversized_streams_are_refused_before_their_bodies_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    start = podside.MAGIC + b"\n"
    # a diff declared over the host's bound: refused at its header
    head = {"record": "diff", "size": 32 * 1024 * 1024 + 1, "zsize": 100, "sha256": "0" * 64}
    with pytest.raises(MalformedResults, match="over the limit"):
        decode_results(start + json.dumps(head).encode() + b"\n")
    # an output over its bound, and outputs over their total
    head = {"record": "output", "path": "x", "size": MAX_OUTPUT_FILE + 1, "zsize": 100, "sha256": "0" * 64}
    with pytest.raises(MalformedResults, match="over the bounds"):
        decode_results(start + json.dumps(head).encode() + b"\n")
    # a zlib bomb: a body within the zsize bound that inflates far past the size it declared
    bomb = zlib.compress(b"\0" * 60_000, 9)
    assert len(bomb) <= podside._zbound(10)
    with pytest.raises(MalformedResults, match="longer than its 10 bytes"):
        decode_results(start + _raw_record("output", b"\0" * 10, bomb, path="x"))
    # a zsize no zlib stream of that size can have
    head = {"record": "output", "path": "x", "size": 10, "zsize": 10_000, "sha256": "0" * 64}
    with pytest.raises(MalformedResults, match="impossible"):
        decode_results(start + json.dumps(head).encode() + b"\n")
    # a line longer than any header, and a stream longer than the bound, fed in chunks
    decoder = ResultsDecoder()
    decoder.feed(start)
    with pytest.raises(MalformedResults, match="longer than"):
        decoder.feed(b"{" + b" " * (podside.MAX_HEADER + 1))
    # the whole stream's bound (made small here: a real one is MAX_RESULTS_BYTES)
    data = _frame(SAMPLE, SAMPLE_DIFF)
    monkeypatch.setattr(podside, "MAX_RESULTS_BYTES", len(data) - 1)
    with pytest.raises(MalformedResults, match=f"longer than {len(data) - 1} bytes"):
        decode_results(data[i : i + 100] for i in range(0, len(data), 100))
    monkeypatch.undo()
    assert MAX_RESULTS_BYTES > 32 * 1024 * 1024 * 4 // 3  # room for a diff at its bound, base64
    with pytest.raises(MalformedResults, match="before the results"):
        decode_results(b"noise\n" * (podside.MAX_PREAMBLE // 6 + 1))
    with pytest.raises(MalformedResults, match="no results"):
        decode_results(b"Traceback (most recent call last):\n")


def test_an_error_record_is_the_hosts_error() -> None:
    out = bytearray()
    encode_results(out.extend, error=RuntimeFailure("git diff failed (exit 128): boom", reason=Reason.DIFF))
    with pytest.raises(RuntimeFailure) as caught:
        decode_results(bytes(out))
    assert caught.value.reason is Reason.DIFF and caught.value.message == "git diff failed (exit 128): boom"
    out = bytearray()
    encode_results(out.extend, error=OSError("No space left on device"))
    with pytest.raises(OSError, match="No space left"):
        decode_results(bytes(out))


def test_clone_log_sections() -> None:
    nonce = "0123456789abcdef"
    prefix = f"##[corral {nonce}]".encode()
    stream = (
        b"\n" + prefix + b" start setup.git.init\n"
        + b"\n" + prefix + b" end setup.git.init 0\n"
        + b"\n" + prefix + b" start setup.git.fetch\n"
        + b"remote: Counting objects\rReceiving objects: 100%\n"
        + b"\n##[corral deadbeefdeadbeef] done\n"  # another nonce: output, not a marker
        + b"\n" + prefix + b" end setup.git.fetch 128\n"
        + b"\n" + prefix + b' error {"kind": "runtime", "reason": "clone", "message": "clone failed"}\n'
    )
    for size in (1, 3, 64, len(stream)):
        log = CloneLog(nonce)
        events = [e for i in range(0, len(stream), size) for e in log.feed(stream[i : i + size])]
        events += log.close()
        assert [(e.kind, e.key, e.exit_code) for e in events if e.kind != "output"] == [
            ("start", "setup.git.init", None),
            ("end", "setup.git.init", 0),
            ("start", "setup.git.fetch", None),
            ("end", "setup.git.fetch", 128),
            ("error", "", None),
        ]
        fetch = b"".join(e.data for e in events if e.kind == "output" and e.key == "setup.git.fetch")
        progress = b"remote: Counting objects\rReceiving objects: 100%\n"
        assert fetch == progress + b"\n##[corral deadbeefdeadbeef] done\n"
        assert not [e for e in events if e.kind == "output" and e.key != "setup.git.fetch"]
        err = events[-1].error
        assert isinstance(err, RuntimeFailure) and err.reason is Reason.CLONE
        assert err.message == "clone failed"


# --- clone, on the host, against a real server ---------------------------------------------------


class _ArgvWatch:
    """Scans every process's argv while podside clone runs (bounded by the clone's own timeout)."""

    def __init__(self, needle: str) -> None:
        self.needle = needle
        self.hits: list[list[str]] = []
        self.seen_podside = self.seen_git = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._scan, daemon=True)

    def _scan(self) -> None:
        deadline = time.monotonic() + CLONE_TIMEOUT
        while not self.stop.is_set() and time.monotonic() < deadline:
            for argv in cmdlines().values():
                joined = " ".join(argv)
                if self.needle in joined:
                    self.hits.append(argv)
                if "podside" in joined and "clone" in argv:
                    self.seen_podside += 1
                if argv[:1] == ["git"] or (argv and argv[0].endswith("/git")):
                    self.seen_git += 1

    def __enter__(self) -> _ArgvWatch:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=30)


def _files_under(top: Path) -> Iterator[Path]:
    for dirpath, _dirs, files in os.walk(top):
        for name in files:
            path = Path(dirpath) / name
            if stat.S_ISREG(os.lstat(path).st_mode):
                yield path


def test_clone_on_the_host_keeps_the_token_out_of_argv_and_files(kit: Kit, tmp_path: Path) -> None:
    origin = tmp_path / "origin"
    make_git_repo(origin, {"README.md": "hello\n", "docs/guide.md": "read me\n", "src/app.py": "x = 1\n"})
    commit = commit_file(origin, "src/app.py", "x = 2\n", "second")
    assert kit.add_repo("github.com/acme/app", origin).status_code in (200, 201)
    blob = os.urandom(5000)
    assert kit.admin.put("/api/v1/files/batch-changes/spec-1/data.bin", content=blob).status_code == 201
    kit.submit(
        repositoryName="github.com/acme/app",
        commit=commit,
        sparseCheckout=["src/*", "README.md"],
        files={"fetched/data.bin": {"bucket": "batch-changes", "key": "spec-1/data.bin"}},
    )
    wire = kit.take()
    token = wire["token"]
    assert token
    job = Job.model_validate(wire)
    plan = plan_job(job, cli_path="corral")
    inline = {"inline/spec.yml": b"name: x\n", "src/extra.txt": b"\x00\x01bytes"}
    spec, items = pod_secret(
        plan,
        token=token,
        executor_name=EXECUTOR,
        frontend_url=kit.url,
        files=inline,
        remote_files={"fetched/data.bin": ("batch-changes", "spec-1/data.bin")},
    )
    secrets = tmp_path / "secrets"
    secrets.mkdir(mode=0o700)
    for key, value in items.items():
        (secrets / key).write_bytes(value)
    volume = tmp_path / "volume"
    volume.mkdir()
    ws, meta = volume / "job-1" / "workspace", volume / "job-1" / "meta.git"
    argv = [
        sys.executable, "-m", podside.MODULE, "clone", "--config", str(secrets / "job.json"),
        "--secrets", str(secrets), "--workspace", str(ws), "--git-dir", str(meta),
    ]
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}
    with _ArgvWatch(token) as watch:
        done = subprocess.run(argv, env=env, capture_output=True, timeout=CLONE_TIMEOUT)
    assert done.returncode == 0, done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")
    assert watch.seen_podside and watch.seen_git, "the scan never saw the clone's processes"
    assert watch.hits == []
    # the log: one section per git command of the host's clone, each exit 0, then done
    log = CloneLog(spec.log_nonce)
    events = log.feed(done.stdout) + log.close()
    assert plan.clone is not None
    keys = [k for k, _ in clone_commands(plan.clone, "x")]
    assert [(e.kind, e.key) for e in events if e.kind in ("start", "end")] == [
        (kind, k) for k in keys for kind in ("start", "end")
    ]
    assert all(e.exit_code == 0 for e in events if e.kind == "end") and events[-1].kind == "done"
    assert token.encode() not in done.stdout + done.stderr
    # the checkout (sparse), the inline files and the fetched file
    assert (ws / "src" / "app.py").read_text() == "x = 2\n" and (ws / "README.md").exists()
    assert not (ws / "docs").exists()
    assert (ws / "inline" / "spec.yml").read_bytes() == b"name: x\n"
    assert (ws / "src" / "extra.txt").read_bytes() == b"\x00\x01bytes"
    assert (ws / "fetched" / "data.bin").read_bytes() == blob
    # the token in no file below the volume; no extraheader, no safe.directory in any git config
    for path in [*_files_under(volume)]:
        data = path.read_bytes()
        assert token.encode() not in data, path
        if path.name == "config":
            assert b"extraheader" not in data.lower() and b"safe" not in data.lower(), path
    rc, remote = _run_git(ws, "remote", "get-url", "origin")
    assert rc == 0 and remote.strip() == b"github.com/acme/app"
    # the diff's git dir holds the commit, and the host's diff reads it
    (ws / "src" / "app.py").write_text("x = 3\n")
    host = asyncio.run(_host_results(ws, meta, plan))
    assert "-x = 2\n+x = 3" in host.diff and "diff --git a/fetched/data.bin" in host.diff
    assert "deleted file" not in host.diff  # what the sparse checkout left out is no deletion


def _run_git(cwd: Path, *args: str) -> tuple[int, bytes]:
    from corral.executor.workspace.host import git_env

    return asyncio.run(capture(["git", *args], cwd=cwd, env=git_env()))


def test_clone_into_volume_directories_of_another_user(kit: Kit, tmp_path: Path) -> None:
    """What a pod meets: the workspace and meta.git are subPath directories the kubelet made (another
    uid's, mode 0777). git is told its git dir and work tree, so its ownership check (which would
    ask for safe.directory) never applies, and none is set."""
    origin = tmp_path / "origin"
    commit = make_git_repo(origin, {"README.md": "hello\n"})
    assert kit.add_repo("github.com/acme/lib", origin).status_code in (200, 201)
    kit.submit(repositoryName="github.com/acme/lib", commit=commit, shallowClone=True)
    wire = kit.take()
    plan = plan_job(Job.model_validate(wire), cli_path="corral")
    spec, items = pod_secret(plan, token=wire["token"], executor_name=EXECUTOR, frontend_url=kit.url)
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    for key, value in items.items():
        (secrets / key).write_bytes(value)
    ws, meta = tmp_path / "workspace", tmp_path / "meta.git"
    for d in (ws, meta):
        d.mkdir(mode=0o777)
        os.chmod(d, 0o777)
        os.chown(d, 4242, 4242)
    done = subprocess.run(
        [sys.executable, "-m", podside.MODULE, "clone", "--config", str(secrets / "job.json"),
         "--secrets", str(secrets), "--workspace", str(ws), "--git-dir", str(meta)],
        capture_output=True, timeout=CLONE_TIMEOUT,
    )
    events = CloneLog(spec.log_nonce).feed(done.stdout)
    assert done.returncode == 0 and events[-1].kind == "done", done.stdout.decode(errors="replace")
    assert (ws / "README.md").read_text() == "hello\n" and (meta / "HEAD").exists()
    assert (meta / "shallow").exists()  # a shallow clone: our git dir ends its history there too
    for path in _files_under(tmp_path / "workspace" / ".git"):
        if path.name == "config":
            assert b"safe" not in path.read_bytes().lower()
    (ws / "README.md").write_text("changed\n")
    host = asyncio.run(_host_results(ws, meta, plan))
    assert "-hello\n+changed" in host.diff


def test_clone_refuses_a_file_through_a_committed_symlink(kit: Kit, tmp_path: Path) -> None:
    """The repository commits `conf -> <a directory outside>`; the job's file conf/evil must not land
    there. podside writes files with the host's no-follow write_files: the job fails (StepFailed,
    reason files) with the host's message, reported in the clone log's error marker."""
    outside = tmp_path / "outside"
    outside.mkdir()
    origin = tmp_path / "origin"
    make_git_repo(origin, {"README.md": "hello\n"})
    os.symlink(str(outside), origin / "conf")
    git(origin, "add", "-A")
    git(origin, "commit", "--quiet", "-m", "link")
    commit = git(origin, "rev-parse", "HEAD").stdout.strip()
    assert kit.add_repo("github.com/acme/linked", origin).status_code in (200, 201)
    kit.submit(repositoryName="github.com/acme/linked", commit=commit)
    wire = kit.take()
    plan = plan_job(Job.model_validate(wire), cli_path="corral")
    spec, items = pod_secret(
        plan, token=wire["token"], executor_name=EXECUTOR, frontend_url=kit.url, files={"conf/evil": b"x"}
    )
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    for key, value in items.items():
        (secrets / key).write_bytes(value)
    ws, meta = tmp_path / "job" / "workspace", tmp_path / "job" / "meta.git"
    done = subprocess.run(
        [sys.executable, "-m", podside.MODULE, "clone", "--config", str(secrets / "job.json"),
         "--secrets", str(secrets), "--workspace", str(ws), "--git-dir", str(meta)],
        capture_output=True, timeout=CLONE_TIMEOUT,
    )
    assert done.returncode == 1
    events = CloneLog(spec.log_nonce).feed(done.stdout)
    assert [e.kind for e in events if e.kind in ("done", "error")] == ["error"]
    err = events[-1].error
    assert isinstance(err, StepFailed) and err.reason is Reason.FILES
    assert "conf/evil" in err.message and "symlink" in err.message
    assert list(outside.iterdir()) == []
    assert os.path.islink(ws / "conf")
