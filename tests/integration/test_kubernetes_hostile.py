"""Hostile review of the kubernetes runtime's pod side (issue 14): what a step can leave behind for the
`main` container, run exactly as the manifest says (its command, workingDir, env, security context and
mounts) in corral/corral:1, as a kubelet would run it.

A step owns the workspace (/data) and, for CLI steps, the pod's /tmp (HOME of setup, CLI steps and
main). Python puts the current directory first on sys.path for `python -m` and reads the user site
($HOME/.local) of a non-root user: a module planted there would be imported by podside instead of
the standard library's or corral's own, and run in the container that holds meta.git and prints the
job's results.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from corral.errors import Reason, RuntimeFailure
from corral.executor.plan import CloneSpec, JobPlan, plan_job
from corral.executor.runtimes.base import JobSpace, Step
from corral.executor.runtimes.kubernetes.manifests import MAIN_CONTAINER, job_objects
from corral.executor.runtimes.kubernetes.podside import collect, decode_results, pod_secret
from corral.executor.settings import ExecutorSettings
from corral.executor.workspace.host import prepare_meta_git
from corral.protocol import Job
from tests.integration.test_kubernetes_podside import (  # the image fixture and podside's helpers
    RUN_TIMEOUT,
    UID,
    _chown,
    _config,
    _plan,
    _workspace,
    image,  # noqa: F401 - a fixture
)
from tests.serverkit import git, make_git_repo

ENV = {
    "EXECUTOR_FRONTEND_URL": "http://127.0.0.1:3080",
    "EXECUTOR_FRONTEND_PASSWORD": "Vx3kq9Lw2RzT7mN4pB8dYc1F",
    "EXECUTOR_QUEUE_NAME": "batches",
    "EXECUTOR_RUNTIME": "kubernetes",
    "EXECUTOR_NAME": "exec-review-1",
}
# What the planted modules do when imported: leave a mark in the workspace and end the program, so
# that the results never come (an attacker's module would print forged ones instead).
PLANT = "import os\nopen('/data/pwned-' + __name__.replace('.', '-'), 'w').close()\nos._exit(0)\n"
SHADOWED = ("argparse", "json", "base64", "hashlib", "contextlib", "dataclasses", "pathlib", "typing")


@dataclasses.dataclass
class _Staged:
    clone: CloneSpec | None
    token: str = "tok-review"
    repository_directory: str = ""
    files: dict[str, bytes] = dataclasses.field(default_factory=dict)
    scripts: dict[str, str] = dataclasses.field(default_factory=lambda: {"step-0.sh": "true\n"})


def _main_container(plan: JobPlan) -> dict[str, Any]:
    """The manifest's `main` container for `plan` (one docker step before it)."""
    settings = ExecutorSettings.from_env(ENV)
    space = JobSpace(job_id=plan.job_id, queue=plan.queue, root=Path("/x"), workspace=Path("/x/workspace"),
                     executor_name="exec-review-1")
    step = Step("step.docker.0", "docker", 0, "corral/busybox:1", ("/bin/sh", "/.corral-steps/step-0.sh"))
    staged = _Staged(plan.clone)
    plan = dataclasses.replace(plan, steps=(step,), scripts=staged.scripts)
    objects = job_objects(settings.kubernetes, settings, space, plan, staged)
    spec = objects.jobs[-1]["spec"]["template"]["spec"]
    (main,) = [c for c in spec["containers"] if c["name"] == MAIN_CONTAINER]
    return main


def _run_as_kubelet(image_name: str, container: dict[str, Any], volumes: dict[str, Path]) -> bytes:
    """Run `container` (a pod spec's) as a kubelet would: its command replaces the image's entrypoint,
    its workingDir (else the image's WORKDIR), literal env, the security context, each volumeMount
    from `volumes` ("<volume>" or "<volume>/<subPath>" -> a host directory). No network."""
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"] == {"drop": ["ALL"]}
    cmd = ["docker", "run", "--rm", "--network", "none", "--user", f"{UID}:{UID}", "--cap-drop", "ALL",
           "--security-opt", "no-new-privileges", "--pids-limit", "256"]
    if sc.get("readOnlyRootFilesystem"):
        cmd.append("--read-only")
    if container.get("workingDir"):
        cmd += ["--workdir", container["workingDir"]]
    for e in container.get("env", []):
        assert "value" in e, "main gets no secret env"
        cmd += ["--env", f"{e['name']}={e['value']}"]
    for m in container["volumeMounts"]:
        key = f"{m['name']}/{m['subPath']}" if m.get("subPath") else m["name"]
        ro = ",readonly" if m.get("readOnly") else ""
        cmd += ["--mount", f"type=bind,source={volumes[key]},target={m['mountPath']}{ro}"]
    command = container["command"]
    cmd += ["--entrypoint", command[0], image_name, *command[1:]]
    done = subprocess.run(cmd, capture_output=True, timeout=RUN_TIMEOUT)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done.stdout


async def test_main_runs_no_module_a_step_plants_in_the_workspace_or_home(image: str, tmp_path: Path) -> None:  # noqa: F811
    ws, meta, commit = await _workspace(tmp_path)
    plan = _plan(commit, ("out.txt",))
    # what the steps leave: modules shadowing what podside imports, in the workspace (the image's
    # WORKDIR) and in the user site of HOME=/tmp (a CLI step's /tmp is main's /tmp)
    (ws / "out.txt").write_text("result\n")
    for name in SHADOWED:
        (ws / f"{name}.py").write_text(PLANT)
    (ws / "corral").mkdir()
    (ws / "corral" / "__init__.py").write_text(PLANT)
    home = tmp_path / "tmp"
    site = home / ".local" / "lib" / "python3.11" / "site-packages"
    site.mkdir(parents=True)
    (site / "usercustomize.py").write_text(PLANT)
    (site / "evil.pth").write_text("import usercustomize\n")
    _chown(home, UID)
    main = _main_container(plan)
    config = _config(tmp_path, plan)
    _chown(ws, UID)
    _chown(meta, UID)
    volumes = {"job-data/workspace": ws, "job-data/meta.git": meta, "job-config": config, "job-tmp": home}
    out = _run_as_kubelet(image, main, volumes)
    assert not sorted(p.name for p in ws.iterdir() if p.name.startswith("pwned")), out[-500:]
    results = decode_results(out)
    assert results.files == {"out.txt": "cmVzdWx0Cg=="}
    assert "+++ b/argparse.py" in results.diff and "+++ b/corral/__init__.py" in results.diff


async def test_collect_refuses_a_repository_directory_a_step_replaced_with_a_link(tmp_path: Path) -> None:
    """With repositoryDirectory set, git's work tree is /data/<dir>: a step that replaces <dir> with a
    symlink would make main's git add and diff what the link points to, outside the workspace (main
    also mounts job.json and meta.git, which no step sees). Run on the host: the same git, no image."""
    origin = tmp_path / "origin"
    commit = make_git_repo(origin, {"README.md": "hello\n"})
    job = tmp_path / "job"
    ws = job / "workspace"
    (ws / "repo").mkdir(parents=True)
    git(tmp_path, "clone", "--quiet", str(origin), str(ws / "repo"))
    await prepare_meta_git(job, ws / "repo", commit)
    outside = tmp_path / "outside"  # stands for /.corral-job in the pod
    outside.mkdir()
    (outside / "job.json").write_text('{"logNonce": "0123456789abcdef"}\n')
    shutil.rmtree(ws / "repo")
    os.symlink(outside, ws / "repo")
    plan = plan_job(
        Job(id=7, queue="batches", repositoryName="acme/app", commit=commit, repositoryDirectory="repo"),
        cli_path="corral",
    )
    spec, _ = pod_secret(plan, token="unused", executor_name="exec-review-1", frontend_url="http://127.0.0.1:9")
    out = bytearray()
    await collect(spec, ws, job / "meta.git", out.extend)
    with pytest.raises(RuntimeFailure) as caught:
        decode_results(bytes(out))
    assert caught.value.reason is Reason.DIFF
    assert "repositoryDirectory repo" in caught.value.message and "not a directory" in caught.value.message
    assert b"logNonce" not in out
