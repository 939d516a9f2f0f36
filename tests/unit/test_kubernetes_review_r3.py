"""Review R3 of the kubernetes runtime's executor side: each test is a hole a hostile job or a careless
operator found in runtime.py, follow.py or workspace.py, and fails on the code before its fix."""

from __future__ import annotations

import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from corral.errors import RuntimeFailure
from corral.executor.plan import JobPlan
from corral.executor.runtimes.base import JobSpace
from corral.executor.runtimes.kubernetes import follow, podside
from corral.executor.runtimes.kubernetes.settings import KubernetesSettings
from corral.executor.runtimes.kubernetes.workspace import PodWorkspace
from corral.executor.workspace.base import Results

TERMINATED = {
    "metadata": {"name": "job-abcde"},
    "status": {"containerStatuses": [{"name": "main", "state": {"terminated": {"exitCode": 0}}}]},
}


class _MainLog:
    """pods/log of `main`: `chunks` (the same bytes object may repeat: no memory of its own)."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.read = 0

    async def log(
        self, pod: str, container: str, *, follow: bool, limit_bytes: int = 0
    ) -> AsyncIterator[bytes]:
        for c in self.chunks:
            self.read += len(c)
            yield c


async def _follow_main(tmp_path: Path, chunks: list[bytes], outputs: tuple[str, ...]) -> Any:
    ws = PodWorkspace()
    root = tmp_path / "job"
    space = JobSpace(job_id=7, queue="batches", root=root, workspace=root / "workspace")
    await ws.prepare(space)
    staged = ws.staged(space)
    staged.outputs = outputs  # what run_plan sets from the plan
    follower = follow.PodFollower(
        _MainLog(chunks),  # type: ignore[arg-type]
        KubernetesSettings(),
        "job",
        frontend_url="http://127.0.0.1:1",
        staged=staged,
        sink=None,  # type: ignore[arg-type]
        pod_log=None,  # type: ignore[arg-type]
        phases=follow.Phases(),
    )
    follower.watch.pod = TERMINATED
    await follower._main("main")
    return ws, space


def _stream(files: dict[str, str]) -> bytes:
    out = bytearray()
    podside.encode_results(out.extend, b"diff --git a/x b/x\n", Results(files=files))
    return bytes(out)


async def test_collect_refuses_an_output_the_job_did_not_declare(tmp_path: Path) -> None:
    """R3-1: the decoder is given the plan's outputs (before: decode_results(job.results) accepted
    any path in the workspace, so a forged stream added files to the job's results)."""
    stream = _stream({"out.txt": "eA==", "planted.bin": "eA=="})
    plan = JobPlan(job_id=7, queue="batches", steps=(), outputs=("out.txt",))
    pieces = [stream[i : i + 100] for i in range(0, len(stream), 100)]
    ws, space = await _follow_main(tmp_path, pieces, plan.outputs)
    with pytest.raises(RuntimeFailure, match=r"'planted\.bin' is not a declared output"):
        await ws.collect(space, plan)
    ok_plan = JobPlan(job_id=7, queue="batches", steps=(), outputs=("out.txt", "planted.bin"))
    ws, space = await _follow_main(tmp_path, [stream], ok_plan.outputs)
    results = await ws.collect(space, ok_plan)
    assert results.files == {"out.txt": "eA==", "planted.bin": "eA=="}
    assert results.diff.startswith("diff --git")


async def test_mains_log_is_decoded_as_it_comes_not_held_whole(tmp_path: Path) -> None:
    """R3-2: 40 MiB of main's log (a refused record, then output) costs the executor a few KiB, not
    the log's size (before: the whole log, up to MAX_RESULTS_BYTES ~77 MiB per job, was kept in a
    bytearray and copied before it was decoded)."""
    piece = b"x" * 1023 + b"\n"
    chunk = piece * 64  # 64 KiB, the same object every time
    chunks = [podside.MAGIC + b"\n" + b'{"record":"bogus"}\n', *[chunk] * 640]
    tracemalloc.start()
    try:
        ws, space = await _follow_main(tmp_path, chunks, ())
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * 1024 * 1024, f"peak {peak} bytes while following a 40 MiB log"
    with pytest.raises(RuntimeFailure, match="unknown record 'bogus'"):
        await ws.collect(space, JobPlan(job_id=7, queue="batches", steps=()))


class _NoEvents:
    async def list_all(self, kind: str, **selectors: str) -> tuple[list[dict[str, Any]], str]:
        return [], "1"


async def test_the_default_image_missing_on_a_node_says_to_set_the_step_image(tmp_path: Path) -> None:
    """R3-5: corral/corral:1 is never pulled (imagePullPolicy Never); a node without it answers
    ErrImageNeverPull, and the job's error now tells the operator what to do (before: only the
    kubelet's 'Container image ... is not present with pull policy of Never')."""
    from corral.errors import StepFailed
    from corral.executor.runtimes.kubernetes.settings import DEFAULT_STEP_IMAGE

    follower = follow.PodFollower(
        _NoEvents(),  # type: ignore[arg-type]
        KubernetesSettings(),
        "job",
        frontend_url="http://127.0.0.1:1",
        staged=None,  # type: ignore[arg-type]
        sink=None,  # type: ignore[arg-type]
        pod_log=type("Log", (), {"write": lambda self, data: None})(),  # type: ignore[arg-type]
        phases=follow.Phases(),
    )
    never = {"reason": "ErrImageNeverPull", "message": "image is not present with pull policy of Never"}
    follower.watch.pod = {
        "metadata": {"name": "job-abcde"},
        "status": {"initContainerStatuses": [{"name": "setup-workspace", "state": {"waiting": never}}]},
    }
    with pytest.raises(StepFailed, match="set KUBERNETES_SINGLE_JOB_STEP_IMAGE") as failed:
        await follower._started("setup-workspace", DEFAULT_STEP_IMAGE, None)
    assert "ErrImageNeverPull" in failed.value.message
    with pytest.raises(StepFailed) as other:
        await follower._started("setup-workspace", "registry.example/corral:1", None)
    assert "KUBERNETES_SINGLE_JOB_STEP_IMAGE" not in other.value.message
