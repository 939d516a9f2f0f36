"""egress_overhead: what a deny-private job's network costs per job, per runtime (medians).

For each runtime, prepare + run_step(`true`) + cleanup in this process with the job's network policy
`deny-private` (a namespace, the nftables ruleset, slirp4netns; for docker also the pause container)
vs `none`, runs alternating. slirp4netns runs in an empty namespace the bench makes (no link to any
network), and `true` sends nothing: no traffic leaves the machine or reaches any host.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from bench.common import RUNTIME_OWNER, BenchError, Row, Table, median, remove_cgroup_parent, tempdir
from bench.job_overhead import IMAGE, _space

NAME = "egress_overhead"
UPLINK = "corral-bench-uplink"


async def _lifecycles(runtime: Any, root: Path, n: int, image: str | None) -> dict[str, list[float]]:
    from corral.executor.network.policy import NetworkPolicy
    from corral.executor.runtimes.base import Step

    step = Step(key="step.docker.0", kind="docker", index=0, image=image, argv=("true",))
    out: dict[str, list[float]] = {"none": [], "deny-private": []}
    policies = {"none": NetworkPolicy.none(), "deny-private": NetworkPolicy.deny_private(uplink=UPLINK)}
    for i in range(n + 1):  # run 0 warms up (the pause image is made there) and is not counted
        for j, (kind, policy) in enumerate(policies.items()):
            space = replace(_space(root, 20_000 + 2 * i + j), network=policy)
            t0 = time.perf_counter()
            try:
                await runtime.prepare(space)
                result = await runtime.run_step(space, step, lambda _b: None)
            finally:
                await runtime.cleanup(space)
            elapsed = time.perf_counter() - t0
            shutil.rmtree(space.root, ignore_errors=True)
            if result.exit_code != 0:
                raise BenchError(
                    f"{runtime.name} ({kind}): `true` exited {result.exit_code}: {result.message}"
                )
            if i:
                out[kind].append(elapsed)
    return out


def _shell(n: int) -> dict[str, list[float]]:
    from corral.executor.runtimes.shell import ShellRuntime

    async def main() -> dict[str, list[float]]:
        rt = ShellRuntime(cgroup_parent=f"corral-{RUNTIME_OWNER}")
        try:
            with tempdir("egress-shell") as root:
                return await _lifecycles(rt, root, n, None)
        finally:
            remove_cgroup_parent(rt.cgroup_parent)

    return asyncio.run(main())


def _docker(n: int) -> dict[str, list[float]]:
    from corral.executor.runtimes.docker import DockerRuntime

    async def main() -> dict[str, list[float]]:
        rt = DockerRuntime(pull=False, owner=RUNTIME_OWNER)
        try:
            with tempdir("egress-docker") as root:
                return await _lifecycles(rt, root, n, IMAGE)
        finally:
            await rt.aclose()

    return asyncio.run(main())


def run(quick: bool = False, profile: bool = False) -> Table:
    n = 3 if quick else 10
    t = Table(
        NAME,
        f"a job's lifecycle (prepare + `true` + cleanup) with deny-private vs no network, medians of {n}",
    )
    ms = 1000.0
    for ns in ("delete", "add"):
        subprocess.run(["ip", "netns", ns, UPLINK], capture_output=True, timeout=20)
    try:
        for name, measure in (("shell", _shell), ("docker", _docker)):
            times = measure(n)
            with_net, without = median(times["deny-private"]) * ms, median(times["none"]) * ms
            t.add(Row(f"{name}: lifecycle ms, deny-private vs none", with_net, without))
            t.add(Row(f"  {name}: added per job ms", with_net - without, None))
    finally:
        subprocess.run(["ip", "netns", "delete", UPLINK], capture_output=True, timeout=20)
    t.notes.append(
        "deny-private: netns + nft ruleset + slirp4netns (docker: + a pause container), removed after"
    )
    return t
