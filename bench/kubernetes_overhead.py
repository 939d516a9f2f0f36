"""kubernetes_overhead: a whole job on the kubernetes runtime against the stand-in cluster, vs the same
job on the docker runtime (target: <= 1.5x), and the Kubernetes API calls one job costs.

The job: a tiny repository cloned, two docker steps (`true`) in corral/busybox:1, the diff. Both
executors (`corral executor run`, one per runtime, each on its own queue of one `corral server`)
take turns job by job, so drift hits both alike. Time is submit -> completed as the producer sees it
(10 ms polls). The kubernetes executor talks to tests/kubekit's stand-in: kmock's emulator as the
API server (the shipped Role enforced), the Job controller, and a kubelet that runs each pod's
containers in the same Docker Engine the docker runtime uses, in a pod network namespace (a pause
container) with a forwarder to the server. A pod runs two containers more than the docker runtime
(setup-workspace: the clone and the files; main: the diff and outputs), each a container start.

API calls: every request the executor's identity made while the job ran (the stand-in records them
all), by verb and resource, per job; the janitor's periodic list is kept out of the window
(EXECUTOR_CLEANUP_TASK_INTERVAL=1h, the start-up sweep happens before the first job).
The pod's phases (queued, scheduling, pulling, running) are the runtime's own, from the job's
setup.kubernetes.pod log entry.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from typing import Any

from bench.common import (
    ROOT,
    BenchError,
    Producer,
    Row,
    Table,
    make_repo,
    median,
    run_executor,
    run_server,
    tempdir,
)

NAME = "kubernetes_overhead"
IMAGE = "corral/busybox:1"
K8S_QUEUE, DOCKER_QUEUE = "benchk8s", "benchdocker"
PHASES_RE = re.compile(
    r"phases: queued ([0-9.]+)s, scheduling ([0-9.]+)s, pulling ([0-9.]+)s, running ([0-9.]+)s"
)


def _job(repo: str) -> dict[str, Any]:
    steps = [{"image": IMAGE, "commands": ["true"]}, {"image": IMAGE, "commands": ["true"]}]
    return {"repositoryName": repo, "dockerSteps": steps}


def _measure(n: int) -> dict[str, Any]:
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from tests.kubekit import run_cluster  # the stand-in cluster lives with the tests

    out: dict[str, Any] = {"k8s": [], "docker": [], "phases": [], "calls": Counter(), "watch": 0}
    with tempdir("k8s-bench") as tmp, run_server(tmp) as srv, Producer(srv.url) as prod:
        make_repo(tmp / "tiny", {"README.md": "tiny\n", "src/a.txt": "a\n"})
        prod.add_repo("bench/tiny", tmp / "tiny")
        spec = _job("bench/tiny")
        port = int(srv.url.rsplit(":", 1)[-1])
        # the queues exist before the executors ask for them; these jobs are the warm-up (image
        # layers, the server's git), not counted
        warmup = [prod.submit(q, spec)["id"] for q in (K8S_QUEUE, DOCKER_QUEUE)]
        with run_cluster(tmp / "cluster", forward_ports=[port]) as cluster:
            k8s_env = {
                "EXECUTOR_QUEUE_NAME": K8S_QUEUE,
                "EXECUTOR_KUBERNETES_CONFIG_PATH": str(cluster.executor_kubeconfig),
                "EXECUTOR_KUBERNETES_NAMESPACE": cluster.namespace,
                "EXECUTOR_CLEANUP_TASK_INTERVAL": "1h",
            }
            docker_env = {"EXECUTOR_QUEUE_NAME": DOCKER_QUEUE, "EXECUTOR_CLEANUP_TASK_INTERVAL": "1h"}
            k8s = run_executor(srv, tmp, "kubernetes", **k8s_env)
            with k8s, run_executor(srv, tmp, "docker", **docker_env):
                for job_id in warmup:
                    prod.wait(job_id, timeout=120)
                for _ in range(n):
                    before = len(cluster.calls(cluster.executor_user))
                    done, t0, seen = prod.run_job(K8S_QUEUE, spec, poll=0.01)
                    calls = cluster.calls(cluster.executor_user)[before:]
                    _, d0, dseen = prod.run_job(DOCKER_QUEUE, spec, poll=0.01)
                    out["k8s"].append(seen - t0)
                    out["docker"].append(dseen - d0)
                    for c in calls:
                        resource = f"{c.resource}/{c.subresource}" if c.subresource else c.resource
                        out["calls"][f"{'watch' if c.watch else c.verb} {resource}"] += 1
                    pod = next(e for e in prod.logs(done["id"]) if e["key"] == "setup.kubernetes.pod")
                    if m := PHASES_RE.search(pod["out"]):
                        out["phases"].append([float(x) for x in m.groups()])
                violations = cluster.violations()
                if violations:
                    raise BenchError(f"the executor made calls outside the shipped Role: {violations}")
        out["retried"] = prod.retried
    return out


def run(quick: bool = False, profile: bool = False) -> Table:
    n = 2 if quick else 6
    title = f"a job (tiny clone + 2 steps) on the stand-in cluster vs the docker runtime, medians of {n}"
    t = Table(NAME, title)
    ms = 1000.0
    m = _measure(n)
    k8s, docker = median(m["k8s"]) * ms, median(m["docker"]) * ms
    ok = k8s <= 1.5 * docker
    t.add(Row("kubernetes: whole job, submit -> completed ms", k8s, docker, "<= 1.5x", ok=ok))
    if m["phases"]:
        for i, name in enumerate(("queued", "scheduling", "pulling", "running")):
            phase = median([p[i] for p in m["phases"]]) * ms
            t.add(Row(f"  pod phase {name} ms (runtime's own timing)", phase))
        in_pod = median([sum(p) for p in m["phases"]]) * ms
        t.add(Row("  outside the pod ms (dequeue, Secret + Job, results, marks, delete)", k8s - in_pod))
    total = sum(m["calls"].values()) / n
    t.add(Row("kubernetes: API calls per job", total, None, "report (fewer is better)"))
    for key, count in sorted(m["calls"].items()):
        t.add(Row(f"  {key} per job", count / n))
    if m["retried"]:
        t.notes.append(f"{m['retried']} job(s) failed and were run again")
    t.notes.append(
        "baseline: the same job on the docker runtime (same Docker Engine); the pod adds a pause "
        "container, the setup-workspace and main containers and the stand-in's forwarder"
    )
    return t
