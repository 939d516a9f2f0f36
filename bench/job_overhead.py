"""job_overhead: what corral adds around a trivial `true`, per runtime (medians of ~10 runs).

Shell runtime (target: <= 100 ms over running `true` directly):
- ShellRuntime.run_step(`true`) in this process (bubblewrap sandbox + cgroups), and the whole runtime
  lifecycle prepare + run_step + cleanup, vs `true` run directly (subprocess);
- a whole job through server + executor (`corral executor run`): submit -> job seen completed
  (GET /api/v1/jobs/{id} every 10 ms), no repository; and the same with a tiny repository to clone.
Docker runtime (target: <= 1.3x `docker run --rm --network none corral/busybox:1 true`):
- DockerRuntime prepare + run_step + cleanup of `true` in this process, vs that `docker run`;
- a whole job through server + executor with the docker runtime, vs that `docker run`.
gVisor (EXECUTOR_DOCKER_RUNTIME=runsc, skipped when dockerd lacks runsc): the same in-process
lifecycle of `true` and of a small file workload (300 files written and read back in /data) under
runsc, side by side with runc in the same run (runsc / runc), plus `docker run --runtime runsc` vs
`docker run` (runc).
Runs of corral and baseline alternate, so drift (page cache, dockerd) hits both alike.
"""

from __future__ import annotations

import asyncio
import functools
import shutil
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench.common import (
    RUNTIME_OWNER,
    BenchError,
    Producer,
    Row,
    Table,
    make_repo,
    median,
    parse_iso,
    remove_cgroup_parent,
    run_executor,
    run_server,
    shell_job,
    tempdir,
)

NAME = "job_overhead"
IMAGE = "corral/busybox:1"
DOCKER_BARE = ["docker", "run", "--rm", "--network", "none", IMAGE, "true"]
DOCKER_BARE_RUNSC = ["docker", "run", "--rm", "--runtime", "runsc", "--network", "none", IMAGE, "true"]
FILES_SCRIPT = "for i in $(seq 300); do echo $i > /data/f$i; done; cat /data/f* > /dev/null"  # gVisor row
MIB = 1024**2


def _timed_sync(argv: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t0


async def _timed(aw: Awaitable[Any]) -> float:
    t0 = time.perf_counter()
    await aw
    return time.perf_counter() - t0


def _space(root: Path, job_id: int) -> Any:
    from corral.executor.runtimes.base import JobSpace, Limits

    jroot = root / f"job-{job_id}"
    jroot.mkdir(mode=0o700)
    workspace = jroot / "workspace"
    workspace.mkdir()
    extra: dict[str, Any] = {}
    if "owner" in JobSpace.__dataclass_fields__:  # so no executor's janitor takes our sandboxes for its own
        extra["owner"] = RUNTIME_OWNER
    return JobSpace(
        job_id=job_id,
        queue="bench",
        root=jroot,
        workspace=workspace,
        limits=Limits(cpus=1.0, memory_bytes=512 * MIB, pids=1024),
        kill_grace=2.0,
        executor_name="bench",
        **extra,
    )


async def _runtime_lifecycle(
    runtime: Any,
    root: Path,
    n: int,
    baseline: Callable[[], float],
    image: str | None,
    argv: tuple[str, ...] = ("true",),
) -> dict[str, list[float]]:
    """n alternating runs of: baseline; prepare + run_step + cleanup (run_step timed on its own too)."""
    from corral.executor.runtimes.base import Step

    out: dict[str, list[float]] = {"baseline": [], "run_step": [], "lifecycle": []}
    step = Step(key="step.docker.0", kind="docker", index=0, image=image, argv=argv)
    for i in range(n + 1):  # run 0 warms up and is not counted
        base = baseline()
        space = _space(root, 10_000 + i)
        t0 = time.perf_counter()
        try:
            await runtime.prepare(space)
            t1 = time.perf_counter()
            result = await runtime.run_step(space, step, lambda _b: None)
            t2 = time.perf_counter()
        finally:
            await runtime.cleanup(space)
        t3 = time.perf_counter()
        shutil.rmtree(space.root, ignore_errors=True)
        if result.exit_code != 0:
            raise BenchError(f"{runtime.name} runtime: `true` exited {result.exit_code}: {result.message}")
        if i:
            out["baseline"].append(base)
            out["run_step"].append(t2 - t1)
            out["lifecycle"].append(t3 - t0)
    return out


def _shell_runtime(n: int) -> dict[str, list[float]]:
    from corral.executor.runtimes.shell import ShellRuntime

    async def main() -> dict[str, list[float]]:
        rt = ShellRuntime(cgroup_parent=f"corral-{RUNTIME_OWNER}")
        problems = await rt.check()
        if problems:
            raise BenchError("shell runtime not usable here: " + "; ".join(problems))
        try:
            with tempdir("shell-rt") as root:
                return await _runtime_lifecycle(rt, root, n, lambda: _timed_sync(["true"]), None)
        finally:
            remove_cgroup_parent(rt.cgroup_parent)

    return asyncio.run(main())


def _docker_runtime(n: int) -> dict[str, list[float]]:
    from corral.executor.runtimes.docker import DockerRuntime

    async def main() -> dict[str, list[float]]:
        rt = DockerRuntime(pull=False)
        try:
            problems = await rt.check()
            if problems:
                raise BenchError("docker runtime not usable here: " + "; ".join(problems))
            with tempdir("docker-rt") as root:
                return await _runtime_lifecycle(rt, root, n, lambda: _timed_sync(DOCKER_BARE), IMAGE)
        finally:
            await rt.aclose()

    return asyncio.run(main())


def _gvisor(n: int) -> dict[str, list[float]] | None:
    """runc and runsc lifecycles of `true` and of FILES_SCRIPT, alternating (None: no runsc)."""
    from corral.executor.runtimes.docker import DockerRuntime

    async def main() -> dict[str, list[float]] | None:
        runc = DockerRuntime(pull=False, owner=RUNTIME_OWNER)
        runsc = DockerRuntime(
            pull=False, owner=RUNTIME_OWNER, runtime="runsc", network_runtime="runsc-hostnet"
        )
        try:
            if await runsc.check():
                return None
            out: dict[str, list[float]] = {}
            files = ("/bin/sh", "-c", FILES_SCRIPT)
            with tempdir("gvisor-rt") as root:
                for i in range(n):  # one run of each per round, so drift hits all alike
                    for key, rt, bare, argv in (
                        ("runc", runc, DOCKER_BARE, ("true",)),
                        ("runsc", runsc, DOCKER_BARE_RUNSC, ("true",)),
                        ("runc_files", runc, DOCKER_BARE, files),
                        ("runsc_files", runsc, DOCKER_BARE_RUNSC, files),
                    ):
                        sub = root / f"{key}-{i}"
                        sub.mkdir()
                        timed = functools.partial(_timed_sync, bare)
                        got = await _runtime_lifecycle(rt, sub, 1, timed, IMAGE, argv)
                        for part, values in got.items():
                            out.setdefault(f"{key}.{part}", []).extend(values)
            return out
        finally:
            await runc.aclose()
            await runsc.aclose()

    return asyncio.run(main())


def _e2e(runtime: str, n: int, *, clone: bool, baseline: list[str]) -> dict[str, list[float]]:
    """Whole jobs through a server and a `corral executor run`; alternates with the baseline command."""
    out: dict[str, list[float]] = {
        "baseline": [],
        "job": [],
        "clone": [],
        "pickup": [],
        "handle": [],
        "seen": [],
        "finish": [],
    }
    with tempdir(f"e2e-{runtime}") as tmp, run_server(tmp) as srv, Producer(srv.url) as prod:
        spec: dict[str, Any] = (
            shell_job("true")
            if runtime == "shell"
            else {"dockerSteps": [{"image": IMAGE, "commands": ["true"]}]}
        )
        repo_spec: dict[str, Any] = {}
        if clone:
            make_repo(tmp / "tiny", {"README.md": "tiny\n", "src/a.txt": "a\n"})
            prod.add_repo("bench/tiny", tmp / "tiny")
            repo_spec = {**spec, "repositoryName": "bench/tiny"}
        prod.submit("bench", spec)  # creates the queue before the executor asks for it
        with run_executor(srv, tmp, runtime):
            for j in prod.http.get("/api/v1/jobs", params={"queue": "bench"}).json():
                prod.wait(j["id"], poll=0.02)
            for i in range(n + 1):  # run 0 warms up and is not counted
                base = _timed_sync(baseline)
                for kind, s in (("job", spec), ("clone", repo_spec)):
                    if not s:
                        continue
                    done, t0, seen = prod.run_job("bench", s, poll=0.01)
                    if not i:
                        continue
                    out[kind].append(seen - t0)
                    if kind == "job":
                        created, started = parse_iso(done["createdAt"]), parse_iso(done["startedAt"])
                        finished = parse_iso(done["finishedAt"])
                        out["pickup"].append(started - created)
                        out["handle"].append(finished - started)
                        out["seen"].append(seen - finished)
                        entry = prod.logs(done["id"])[-1]  # the step's (no clone here)
                        step_end = parse_iso(entry["startTime"]) + (entry["durationMs"] or 0) / 1000
                        out["finish"].append(finished - step_end)
                if i:
                    out["baseline"].append(base)
        out["retried"] = [float(prod.retried)]
    return out


def run(quick: bool = False, profile: bool = False) -> Table:
    n = 3 if quick else 10
    t = Table(NAME, f"a trivial `true` through corral vs run directly, medians of {n} runs")
    ms = 1000.0

    sh = _shell_runtime(n)
    direct = median(sh["baseline"]) * ms
    step = median(sh["run_step"]) * ms
    life = median(sh["lifecycle"]) * ms
    t.add(Row("shell: run_step(true) ms", step, direct, "<= +100 ms", ok=step - direct <= 100))
    t.add(Row("shell: prepare+run_step+cleanup ms", life, direct, "<= +100 ms", ok=life - direct <= 100))

    e2e = _e2e("shell", n, clone=True, baseline=["true"])
    job = median(e2e["job"]) * ms
    t.add(Row("shell: whole job, submit -> completed ms", job, median(e2e["baseline"]) * ms))
    t.add(Row("  of which enqueue -> dequeue ms (server)", median(e2e["pickup"]) * ms, None))
    t.add(Row("  of which dequeue -> markComplete ms (server)", median(e2e["handle"]) * ms, None))
    t.add(Row("    step end -> markComplete (cleanup, upload)", median(e2e["finish"]) * ms, None))
    t.add(Row("  of which markComplete -> seen by 10 ms poll", median(e2e["seen"]) * ms, None))
    clone = median(e2e["clone"]) * ms
    t.add(Row("shell: whole job + tiny repo clone ms", clone, job))
    t.add(Row("  clone cost ms (difference)", clone - job, None))

    dk = _docker_runtime(n)
    bare = median(dk["baseline"]) * ms
    dlife = median(dk["lifecycle"]) * ms
    t.add(Row("docker: prepare+run_step+cleanup ms", dlife, bare, "<= 1.3x", ok=dlife <= 1.3 * bare))
    t.add(Row("docker: run_step(true) ms", median(dk["run_step"]) * ms, bare))
    de2e = _e2e("docker", n, clone=False, baseline=DOCKER_BARE)
    dbare = median(de2e["baseline"]) * ms
    t.add(Row("docker: whole job, submit -> completed ms", median(de2e["job"]) * ms, dbare))
    t.add(Row("  of which dequeue -> markComplete ms (server)", median(de2e["handle"]) * ms, None))
    t.add(Row("    step end -> markComplete (cleanup, upload)", median(de2e["finish"]) * ms, None))
    gv = _gvisor(n)
    if gv is None:
        t.notes.append("gVisor rows skipped: dockerd has no runsc/runsc-hostnet (scripts/start-dockerd.sh)")
    else:
        med = {k: median(v) * ms for k, v in gv.items()}
        t.add(
            Row(
                "gvisor: prepare+run_step+cleanup(true) ms, runsc vs runc",
                med["runsc.lifecycle"],
                med["runc.lifecycle"],
            )
        )
        t.add(Row("gvisor: run_step(true) ms, runsc vs runc", med["runsc.run_step"], med["runc.run_step"]))
        t.add(
            Row(
                "gvisor: run_step(300 files) ms, runsc vs runc",
                med["runsc_files.run_step"],
                med["runc_files.run_step"],
            )
        )
        t.add(
            Row(
                "gvisor: `docker run --runtime runsc true` vs runc ms",
                med["runsc.baseline"],
                med["runc.baseline"],
            )
        )
        t.add(
            Row(
                "gvisor: corral runsc lifecycle vs `docker run --runtime runsc`",
                med["runsc.lifecycle"],
                med["runsc.baseline"],
                "<= 1.3x",
                ok=med["runsc.lifecycle"] <= 1.3 * med["runsc.baseline"],
            )
        )
    retried = int(e2e["retried"][0] + de2e["retried"][0])
    if retried:
        t.notes.append(f"{retried} job(s) failed and were run again")
    t.notes.append(
        "baselines: `true` via subprocess (shell rows), the whole job without clone (clone row), "
        f"`{' '.join(DOCKER_BARE)}` (docker rows)"
    )
    t.notes.append(
        "the shell runtime ignores a docker step's image and runs `/bin/sh <script>` on the host; "
        "the in-process runtime rows run `true` itself"
    )
    return t
