"""corral's executor (a real `corral executor run`, shell sandbox) against a stand-in that answers as
Sourcegraph's frontend does (tests/compat/sgfrontend.py): what issue 11 found diverging, checked on
the wire.

- v2 jobs: the executor's dequeue version makes Sourcegraph hand out v2 jobs, so binary file bytes
  (00 ff 41 0a) arrive intact; numCPUs, memory and diskSpace as Sourcegraph's executor sends them;
- two queues: job 7 of `batches` and job 7 of `codeintel` run side by side, and canceling
  `7-codeintel` cancels only that one;
- files given by bucket/key come from the files API with the job token;
- skip.json after a `.pre` step skips to the step it names;
- heartbeats: "version": "V2" and int ids on one queue (a 4.x server then answers the object form),
  Sourcegraph's telemetry keys;
- a job missing from knownIds is dropped: stopped, cleaned up, never marked;
- git: the clone goes through the stand-in's smart HTTP with X-Sourcegraph-Actor-UID: internal and
  Sourcegraph's fetch options;
- CLI steps of a Sourcegraph job want src-cli: without it the job fails at once, saying so;
- a path prefix in EXECUTOR_FRONTEND_URL is kept for every call, git and files included.
"""

from __future__ import annotations

import base64
import contextlib
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.compat.sgfrontend import Frontend, SgFile, SgJob, bare_repo, serve
from tests.conftest import bwrap_ok, require
from tests.e2e.kit import CORRAL, stop_executor

SECRET = "compat-executor-secret-0123456789"
WAIT = 60.0  # seconds a wait helper waits at most
IMAGE = "corral/busybox:1"  # ignored by the shell sandbox, as a Sourcegraph job names one


@dataclass
class Executor:
    frontend: Frontend
    url: str
    proc: subprocess.Popen[bytes]
    log: Path
    workspaces: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace")


def wait(probe: Callable[[], Any], what: str, ex: Executor, timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if ex.proc.poll() is not None:
            pytest.fail(
                f"the executor exited ({ex.proc.returncode}) waiting for {what}:\n{ex.text()[-3000:]}"
            )
        if time.monotonic() > deadline:
            pytest.fail(f"waited {timeout}s for {what}; executor log:\n{ex.text()[-3000:]}")
        time.sleep(0.05)


def done(ex: Executor, queue: str, job_id: int) -> SgJob:
    job = wait(
        lambda: (j := ex.frontend.job(queue, job_id)).state not in ("queued", "processing") and j,
        f"job {job_id}-{queue} to end",
        ex,
    )
    assert isinstance(job, SgJob)
    return job


def out(job: SgJob) -> str:
    return "".join(f"== {e.get('key')}\n{e.get('out', '')}" for e in job.logs)


@contextlib.contextmanager
def executor(
    tmp: Path, name: str, *, prefix: str = "", old_heartbeat: bool = False, **env: str
) -> Iterator[Executor]:
    """The stand-in (repositories under tmp/repos) and a `corral executor run` against it."""
    require(bwrap_ok(), "bubblewrap, cgroup v1 and root are needed (the shell sandbox)")
    frontend = Frontend(SECRET, prefix=prefix, repos_root=tmp / "repos", old_heartbeat=old_heartbeat)
    with serve(frontend) as url:
        variables = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",  # no src-cli here
            "EXECUTOR_FRONTEND_URL": url,
            "EXECUTOR_FRONTEND_PASSWORD": SECRET,
            "EXECUTOR_QUEUE_NAME": "batches",
            "EXECUTOR_RUNTIME": "shell",
            "EXECUTOR_VM_PREFIX": f"compat-{name}",  # its own: no janitor of another test sweeps its jobs
            "EXECUTOR_WORKSPACE_ROOT": str(tmp / "ws"),
            "EXECUTOR_JOB_MEMORY": "512M",
            "EXECUTOR_JOB_NUM_CPUS": "1",
            "EXECUTOR_JOB_DISK_SPACE": "1G",
            "EXECUTOR_QUEUE_POLL_INTERVAL": "200ms",
            "EXECUTOR_HEARTBEAT_INTERVAL": "1s",
            "EXECUTOR_KILL_GRACE": "2s",
            "EXECUTOR_CLI_PATH": CORRAL,
            **env,
        }
        if "EXECUTOR_QUEUE_NAMES" in env:
            variables.pop("EXECUTOR_QUEUE_NAME")
        log = tmp / f"executor-{name}.log"
        with open(log, "wb") as sink:
            proc = subprocess.Popen(
                [CORRAL, "executor", "run"], env=variables, stdout=sink, stderr=subprocess.STDOUT
            )
        ex = Executor(frontend, url, proc, log, tmp / "ws")
        try:
            yield ex
        finally:
            stop_executor(proc)


@pytest.fixture(scope="module")
def one_queue(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Executor]:
    """One executor on `batches` against a 4.x-style frontend (bare-array heartbeat answers to a
    heartbeat without "V2"), shared by the tests below."""
    tmp = tmp_path_factory.mktemp("sg-one")
    with executor(tmp, "one", old_heartbeat=True) as ex:
        yield ex


# -- v2 jobs, resources, heartbeats --------------------------------------------------------------
def test_a_v2_job_delivers_binary_files_intact(one_queue: Executor) -> None:
    ex = one_queue
    ex.frontend.enqueue(
        SgJob(
            1,
            "batches",
            files={"bin.dat": SgFile(b"\x00\xffA\n")},
            docker_steps=[{"image": IMAGE, "commands": ["od -An -tx1 bin.dat"]}],
        )
    )
    job = done(ex, "batches", 1)
    assert job.state == "completed", (job, ex.text()[-2000:])
    assert job.version == 2
    assert "00 ff 41 0a" in out(job)
    dequeue = next(r.body for r in ex.frontend.recorded("/batches/dequeue"))
    assert dequeue["version"] == "0.0.0+dev"
    assert (dequeue["numCPUs"], dequeue["memory"], dequeue["diskSpace"]) == (1, "512M", "1G")


def test_heartbeats_speak_v2_with_int_ids_and_sourcegraphs_telemetry(one_queue: Executor) -> None:
    ex = one_queue
    ex.frontend.enqueue(SgJob(2, "batches", docker_steps=[{"image": IMAGE, "commands": ["sleep 2.5"]}]))
    job = done(ex, "batches", 2)
    assert job.state == "completed", job  # never dropped: "V2" got the object answer, not the array
    bodies = [r.body for r in ex.frontend.recorded("/batches/heartbeat")]
    assert all(b["version"] == "V2" for b in bodies)
    assert any(b["jobIds"] == [2] for b in bodies) and any(b["jobIds"] is None for b in bodies)
    b = bodies[-1]
    keys = ("os", "architecture", "dockerVersion", "executorVersion", "gitVersion", "igniteVersion")
    assert set(keys) | {"srcCliVersion", "prometheusMetrics"} <= set(b)
    assert b["os"] == "linux" and b["architecture"] in ("amd64", "arm64")
    assert b["gitVersion"][:1].isdigit() and "# TYPE" in b["prometheusMetrics"]


# -- clone, files by bucket/key, skip.json --------------------------------------------------------
def test_clone_files_from_the_files_api_and_skip_json(one_queue: Executor) -> None:
    ex = one_queue
    assert ex.frontend.repos_root is not None
    commit = bare_repo(ex.frontend.repos_root, "acme/app", {"README.md": "hello from git\n"})
    ex.frontend.files[("batch-changes", "spec-1/input")] = b"\x00from the files API\xff"
    steps = [
        {
            "key": "step.0.pre",
            "image": IMAGE,
            "commands": ['echo \'{"nextStep": "step.1.pre"}\' > /data/skip.json'],
        },
        {"key": "step.0.run", "image": IMAGE, "commands": ["echo SKIPPED-RUN"]},
        {"key": "step.0.post", "image": IMAGE, "commands": ["echo SKIPPED-POST"]},
        {
            "key": "step.1.pre",
            "image": IMAGE,
            "commands": ["cat README.md", "od -An -c input.bin", "ls skip.json || true"],
        },
    ]
    ex.frontend.enqueue(
        SgJob(
            3,
            "batches",
            repository_name="acme/app",
            commit=commit,
            files={"input.bin": SgFile(bucket="batch-changes", key="spec-1/input")},
            docker_steps=steps,
        )
    )
    job = done(ex, "batches", 3)
    assert job.state == "completed", (job, out(job))
    keys = [e["key"] for e in job.logs]
    assert "step.docker.step.0.run" not in keys and "step.docker.step.0.post" not in keys
    assert keys[-2:] == ["step.docker.step.0.pre", "step.docker.step.1.pre"], keys
    text = out(job)
    assert "hello from git" in text and "f   r   o   m" in text and "SKIPPED" not in text
    assert "No such file" in text  # the executor removed skip.json after reading it
    fetch = next(e for e in job.logs if e["key"] == "setup.git.fetch")
    assert fetch["command"][-2:] == ["origin", commit] and "--no-tags" not in fetch["command"]
    git = ex.frontend.recorded("/acme/app/info/refs") + ex.frontend.recorded("/acme/app/git-upload-pack")
    assert git and all(r.headers.get("x-sourcegraph-actor-uid") == "internal" for r in git)
    assert all(r.headers["authorization"].startswith("Bearer ") for r in git)
    (get,) = ex.frontend.recorded("/.executors/files/batch-changes/spec-1/input")
    assert get.headers["authorization"].startswith("Bearer ") and get.headers["x-sourcegraph-job-id"] == "3"


# -- CLI steps, knownIds --------------------------------------------------------------------------
def test_cli_steps_without_src_cli_fail_at_once_naming_the_setting(one_queue: Executor) -> None:
    ex = one_queue
    ex.frontend.enqueue(SgJob(4, "batches", cli_steps=[{"command": ["batch-exec", "-f", "input.json"]}]))
    job = done(ex, "batches", 4)
    assert job.state == "failed", job
    assert "src-cli is not installed" in job.failure and "EXECUTOR_SRC_CLI_PATH" in job.failure
    assert not job.logs  # nothing ran


def test_cli_steps_run_src_cli_which_is_the_only_file_of_its_directory_they_see(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """EXECUTOR_SRC_CLI_PATH binds only that file into the CLI sandbox (review of issue 11: its
    directory was bound, so src-cli in /root or /tmp showed all of it to every job)."""
    tmp = tmp_path_factory.mktemp("sg-src")
    tools = tmp / "tools"
    tools.mkdir(mode=0o755)
    (tools / "secret.txt").write_text("OPERATOR-SECRET\n")
    (tools / "secret.txt").chmod(0o644)  # readable by anyone who can see it: only the bind protects it
    src = tools / "src"
    src.write_text(
        '#!/bin/sh\necho "src-cli ran: $*"\nls -a "$(dirname "$0")"\ncat "$(dirname "$0")/secret.txt"\n'
    )
    src.chmod(0o755)
    with executor(tmp, "src", EXECUTOR_SRC_CLI_PATH=str(src)) as ex:
        ex.frontend.enqueue(SgJob(8, "batches", cli_steps=[{"command": ["batch-exec", "-f", "input.json"]}]))
        job = done(ex, "batches", 8)
    text = out(job)
    assert "src-cli ran: batch-exec -f input.json" in text, (job, text, ex.text()[-2000:])
    assert "secret.txt" not in text.replace(f"{tools}/secret.txt", "") and "OPERATOR-SECRET" not in text
    assert job.state == "failed" and "step.src.0 failed with exit code 1" in job.failure  # cat failed


def test_a_job_missing_from_known_ids_is_dropped_and_never_marked(one_queue: Executor) -> None:
    ex = one_queue
    ex.frontend.enqueue(
        SgJob(5, "batches", docker_steps=[{"image": IMAGE, "commands": ["echo started", "sleep 60"]}])
    )
    wait(lambda: "started" in out(ex.frontend.job("batches", 5)), "job 5 to start", ex)
    ex.frontend.give_away("batches", 5)
    wait(lambda: not list(ex.workspaces.glob("compat-one.batches-5-*")), "job 5's workspace to go", ex)
    ex.frontend.enqueue(SgJob(6, "batches", docker_steps=[{"image": IMAGE, "commands": ["echo next"]}]))
    assert done(ex, "batches", 6).state == "completed"  # its slot is free again
    marks = [r for r in ex.frontend.requests if "/mark" in r.path and r.body and r.body.get("jobId") == 5]
    assert not marks, marks
    job = ex.frontend.job("batches", 5)
    assert job.state == "processing" and job.worker == "another-executor"
    ids = [r.body["jobIds"] or [] for r in ex.frontend.recorded("/batches/heartbeat")]
    wait(
        lambda: 5 not in (ex.frontend.recorded("/batches/heartbeat")[-1].body["jobIds"] or []),
        "a later heartbeat",
        ex,
    )
    ids = [r.body["jobIds"] or [] for r in ex.frontend.recorded("/batches/heartbeat")]
    first_without = max(i for i, x in enumerate(ids) if 5 in x) + 1
    assert all(5 not in x for x in ids[first_without:])  # never heartbeated again once dropped
    assert "no longer considers it ours" in ex.text()


# -- two queues -----------------------------------------------------------------------------------
def test_job_7_of_two_queues_runs_side_by_side_and_cancels_alone(tmp_path: Path) -> None:
    with executor(
        tmp_path, "two", EXECUTOR_QUEUE_NAMES="batches,codeintel", EXECUTOR_MAXIMUM_NUM_JOBS="2"
    ) as ex:
        ex.frontend.enqueue(
            SgJob(
                7,
                "batches",
                docker_steps=[{"image": IMAGE, "commands": ["echo b-started", "sleep 4", "echo b-done"]}],
            )
        )
        ex.frontend.enqueue(
            SgJob(7, "codeintel", docker_steps=[{"image": IMAGE, "commands": ["echo c-started", "sleep 60"]}])
        )
        wait(lambda: "b-started" in out(ex.frontend.job("batches", 7)), "7-batches to start", ex)
        wait(lambda: "c-started" in out(ex.frontend.job("codeintel", 7)), "7-codeintel to start", ex)

        def both() -> bool:
            groups = [r.body.get("jobIdsByQueue") or [] for r in ex.frontend.recorded("/queue/heartbeat")]
            return any(
                {g["queueName"]: g["jobIds"] for g in gs} == {"batches": ["7"], "codeintel": ["7"]}
                for gs in groups
            )

        wait(both, "a heartbeat naming 7 in both queues", ex)
        ex.frontend.request_cancel("codeintel", 7)
        codeintel = done(ex, "codeintel", 7)
        batches = done(ex, "batches", 7)
    assert codeintel.state == "canceled" and codeintel.failure == "canceled", codeintel
    assert batches.state == "completed" and "b-done" in out(batches), batches
    dequeues = ex.frontend.recorded("/queue/dequeue")
    assert dequeues and all(r.body["queues"] == ["batches", "codeintel"] for r in dequeues)


# -- a path prefix ---------------------------------------------------------------------------------
def _settings_refuse_a_path_prefix() -> bool:
    """Whether EXECUTOR_FRONTEND_URL still refuses a path (the configuration's part of issue 11)."""
    from corral.errors import ConfigError
    from corral.executor.settings import ExecutorSettings

    env = {"EXECUTOR_FRONTEND_URL": "http://127.0.0.1:1/sg", "EXECUTOR_FRONTEND_PASSWORD": SECRET}
    try:
        ExecutorSettings.from_env({**env, "EXECUTOR_QUEUE_NAME": "batches", "EXECUTOR_RUNTIME": "shell"})
    except ConfigError as exc:
        return "EXECUTOR_FRONTEND_URL" in exc.message
    return False


@pytest.mark.xfail(
    _settings_refuse_a_path_prefix(),
    reason="ExecutorSettings refuses a path in EXECUTOR_FRONTEND_URL until the configuration change lands",
    strict=True,
)
def test_a_path_prefix_in_the_frontend_url_works_for_every_call(tmp_path: Path) -> None:
    with executor(tmp_path, "prefix", prefix="/sg") as ex:
        assert ex.url.endswith("/sg") and ex.frontend.repos_root is not None
        commit = bare_repo(ex.frontend.repos_root, "acme/app", {"README.md": "prefixed\n"})
        ex.frontend.files[("batch-changes", "s/f")] = b"via the prefix"
        ex.frontend.enqueue(
            SgJob(
                1,
                "batches",
                repository_name="acme/app",
                commit=commit,
                files={"f.txt": SgFile(bucket="batch-changes", key="s/f")},
                docker_steps=[{"image": IMAGE, "commands": ["cat README.md f.txt"]}],
            )
        )
        job = done(ex, "batches", 1)
    assert job.state == "completed", (job, ex.text()[-2000:])
    assert "prefixed" in out(job) and "via the prefix" in out(job)
    paths = {r.path for r in ex.frontend.requests}
    assert paths and all(p.startswith("/sg/.executors/") for p in paths), paths
    assert any(p.startswith("/sg/.executors/git/acme/app/") for p in paths)


def test_the_stand_in_marshals_jobs_as_sourcegraphs_fixtures() -> None:
    """internal/executor/types/job_test.go, TestJob_MarshalJSON ("4.3" and "4.2"): the stand-in's
    payloads are Sourcegraph's, so the tests above run against what a real frontend sends."""
    import json

    from tests.compat.sgfrontend import marshal_job

    job = SgJob(
        1,
        "batches",
        repository_name="my-repo",
        repository_directory="foo/bar",
        commit="xyz",
        fetch_tags=True,
        shallow_clone=True,
        sparse_checkout=["a", "b", "c"],
        files={
            "script1.sh": SgFile(b"hello"),
            "script2.py": SgFile(
                bucket="my-bucket", key="file/key", modified_at="2022-10-07T18:55:45.831031-06:00"
            ),
        },
        docker_steps=[{"image": "my-image", "commands": ["run"], "dir": "faz/baz", "env": ["FOO=BAR"]}],
        cli_steps=[{"command": ["x", "y", "z"], "dir": "raz/daz", "env": ["BAZ=FAZ"]}],
        redacted_values={"password": "foo"},
    )
    v2 = json.loads(marshal_job(job, version2=True, token="", with_queue=False))
    assert v2 == {
        "version": 2,
        "id": 1,
        "token": "",
        "repositoryName": "my-repo",
        "repositoryDirectory": "foo/bar",
        "commit": "xyz",
        "fetchTags": True,
        "shallowClone": True,
        "sparseCheckout": ["a", "b", "c"],
        "files": {
            "script1.sh": {
                "content": base64.b64encode(b"hello").decode(),
                "modifiedAt": "0001-01-01T00:00:00Z",
            },
            "script2.py": {
                "bucket": "my-bucket",
                "key": "file/key",
                "modifiedAt": "2022-10-07T18:55:45.831031-06:00",
            },
        },
        "dockerAuthConfig": {},
        "dockerSteps": [{"image": "my-image", "commands": ["run"], "dir": "faz/baz", "env": ["FOO=BAR"]}],
        "cliSteps": [{"command": ["x", "y", "z"], "dir": "raz/daz", "env": ["BAZ=FAZ"]}],
        "redactedValues": {"password": "foo"},
    }
    del job.files["script2.py"]
    v1 = json.loads(marshal_job(job, version2=False, token="", with_queue=False))
    assert "version" not in v1 and "dockerAuthConfig" not in v1
    assert v1["files"] == {"script1.sh": {"content": "hello", "modifiedAt": "0001-01-01T00:00:00Z"}}
    # handler_test.go, "Dequeue record": an empty job, bare nulls and an empty files object
    empty = json.loads(marshal_job(SgJob(1, "test"), version2=False, token="sometoken", with_queue=False))
    assert empty == {
        "id": 1,
        "token": "sometoken",
        "repositoryName": "",
        "repositoryDirectory": "",
        "commit": "",
        "fetchTags": False,
        "shallowClone": False,
        "sparseCheckout": None,
        "files": {},
        "dockerSteps": None,
        "cliSteps": None,
        "redactedValues": None,
    }


@pytest.mark.parametrize(
    ("version", "newest", "older"),
    [  # v2 under handler.go's ">= 4.3.0-0" (newest) and under the older "4.3.0-0" (= 4.3.0-0)
        ("dev", True, True),  # version_check.go short-circuits these two in every version:
        ("0.0.0+dev", True, True),  # the reason corral's executor sends 0.0.0+dev
        ("4.3.0-0", True, True),
        ("4.3.0-0+build.5", True, True),  # build metadata is ignored
        ("4.3.0-rc.1", True, False),  # prereleases compare: the constraint names one
        ("4.3.0", True, False),
        ("5.2.0", True, False),
        ("4.2", False, False),
        ("4.2.9", False, False),
        ("0.0.0", False, False),
        ("0.1.0", False, False),
        ("211111_2021-11-11_abcdef1", False, False),
        ("230101_2023-01-01_abcdef1234", True, True),
    ],
)
def test_the_stand_in_checks_versions_as_sourcegraph(version: str, newest: bool, older: bool) -> None:
    from tests.compat.sgfrontend import (
        V2_CONSTRAINT,
        V2_CONSTRAINT_OLD,
        VersionError,
        check_sourcegraph_version,
    )

    assert (V2_CONSTRAINT, V2_CONSTRAINT_OLD) == (">= 4.3.0-0", "4.3.0-0")
    assert check_sourcegraph_version(version) is newest
    assert check_sourcegraph_version(version, V2_CONSTRAINT_OLD) is older
    with pytest.raises(VersionError):
        check_sourcegraph_version("\n1.2")


@pytest.mark.parametrize("constraint", [">= 4.3.0-0", "4.3.0-0"])
async def test_corrals_executor_gets_v2_jobs_from_either_constraint_form(
    constraint: str, tmp_path: Path
) -> None:
    """SOURCEGRAPH_PROTOCOL_VERSION is the one version both forms hand v2 jobs (see its comment)."""
    import httpx

    from corral.executor.client import SOURCEGRAPH_PROTOCOL_VERSION, QueueClient
    from corral.executor.settings import ExecutorSettings

    frontend = Frontend(SECRET, v2_constraint=constraint)
    frontend.enqueue(SgJob(1, "batches", files={"b": SgFile(b"\x00\xff")}))
    settings = ExecutorSettings(
        frontend_url="http://sg.test",
        frontend_password=SECRET,
        queues=["batches"],
        name="e",
        workspace_root=tmp_path,
    )
    client = QueueClient(settings, transport=httpx.ASGITransport(app=frontend.app))
    try:
        job = await client.dequeue()
    finally:
        await client.aclose()
    assert job is not None and job.version == 2 and job.files["b"].data(2) == b"\x00\xff"
    body = next(r.body for r in frontend.recorded("/batches/dequeue"))
    assert body["version"] == SOURCEGRAPH_PROTOCOL_VERSION == "0.0.0+dev"


async def test_the_stand_in_authenticates_as_sourcegraphs_middlewares() -> None:
    """queuehandler.go's validateExecutorToken and validateJobRequest: the statuses and messages
    the executor has to get right (a wrong executor token on a job route is 403, not 401)."""
    import httpx

    frontend = Frontend(SECRET)
    frontend.enqueue(SgJob(1, "batches"))
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=frontend.app), base_url="http://sg.test"
    ) as http:
        executor = {"Authorization": f"token-executor {SECRET}"}
        assert (await http.get("/.executors/test/auth")).status_code == 401
        assert (
            await http.get("/.executors/test/auth", headers={"Authorization": "Bearer x"})
        ).status_code == 401
        assert (await http.get("/.executors/test/auth", headers=executor)).text == "ok"
        r = await http.post("/.executors/queue/batches/dequeue", headers=executor, content=b"")
        assert (r.status_code, r.text) == (400, "Failed to unmarshal payload: EOF\n")
        r = await http.post("/.executors/queue/batches/dequeue", headers=executor, json={"executorName": ""})
        assert (r.status_code, r.json()) == (500, {"error": "worker hostname cannot be empty"})
        r = await http.post(
            "/.executors/queue/batches/dequeue",
            headers=executor,
            json={"executorName": "e", "version": "\n1.2"},
        )
        assert (r.status_code, r.json()) == (
            500,
            {"error": 'failed to check version "\\n1.2": Invalid Semantic Version'},
        )
        r = await http.post("/.executors/queue/batches/dequeue", headers=executor, json={"executorName": "e"})
        job = r.json()
        assert "version" not in job and "queue" not in job  # no version sent: v1; one queue: no queue
        op = {"executorName": "e", "jobId": 1}
        bearer = {"Authorization": f"Bearer {job['token']}", "X-Sourcegraph-Executor-Name": "e"}
        r = await http.post("/.executors/queue/batches/markComplete", headers=bearer, json=op)
        assert (r.status_code, r.text) == (400, "job ID not provided in header 'X-Sourcegraph-Job-ID'\n")
        r = await http.post(
            "/.executors/queue/batches/markComplete", headers={**bearer, "X-Sourcegraph-Job-ID": "1"}, json=op
        )
        assert (r.status_code, r.text) == (401, "invalid token\n")  # no heartbeat yet: unknown executor
        await http.post("/.executors/queue/batches/heartbeat", headers=executor, json={"executorName": "e"})
        wrong = {"Authorization": "token-executor wrong", "X-Sourcegraph-Job-ID": "1"}
        assert (
            await http.post("/.executors/queue/batches/markComplete", headers=wrong, json=op)
        ).status_code == 403
        r = await http.post(
            "/.executors/queue/codeintel/markComplete",
            headers={**bearer, "X-Sourcegraph-Job-ID": "1"},
            json=op,
        )
        assert (r.status_code, r.text) == (403, "invalid token\n")  # the token is for batches
        r = await http.post(
            "/.executors/queue/batches/markComplete", headers={**bearer, "X-Sourcegraph-Job-ID": "1"}, json=op
        )
        assert r.status_code == 204 and frontend.job("batches", 1).state == "completed"
        r = await http.post(
            "/.executors/queue/batches/markComplete",
            headers=executor | {"X-Sourcegraph-Job-ID": "1"},
            json=op,
        )
        assert (r.status_code, r.text) == (404, "null")  # not processing any more
        assert (
            await http.post("/.executors/queue/other/dequeue", headers=executor, json={})
        ).status_code == 404
