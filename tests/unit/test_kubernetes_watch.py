"""The kubernetes runtime's parts without a cluster: readings of a pod's status (watch.py), the
pod-side workspace's staging bounds (workspace.py), a broken log stream followed again (runtime.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from corral.errors import RuntimeFailure
from corral.executor import safefs
from corral.executor.runtimes.base import JobSpace
from corral.executor.runtimes.kubernetes.watch import container_state, pod_reason, scheduling
from corral.executor.runtimes.kubernetes.workspace import MAX_STAGED_FILES, PodWorkspace

POD = {
    "metadata": {"name": "corral-batches-7-1-abcde"},
    "spec": {"nodeName": "node-1"},
    "status": {
        "phase": "Pending",
        "conditions": [{"type": "PodScheduled", "status": "True"}],
        "initContainerStatuses": [
            {"name": "setup-workspace", "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}},
            {"name": "step-docker-0", "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}},
            {"name": "step-docker-1", "state": {"running": {"startedAt": "2024-01-01T00:00:00Z"}}},
            {
                "name": "step-docker-2",
                "state": {"waiting": {"reason": "ErrImagePull", "message": 'image "x" not found'}},
            },
        ],
    },
}


def test_container_states() -> None:
    assert container_state(POD, "setup-workspace").exit_code == 0
    oom = container_state(POD, "step-docker-0")
    assert (oom.state, oom.exit_code, oom.reason) == ("terminated", 137, "OOMKilled")
    assert container_state(POD, "step-docker-1").state == "running"
    assert container_state(POD, "step-docker-1").started
    pull = container_state(POD, "step-docker-2")
    assert (pull.state, pull.reason, pull.message) == ("waiting", "ErrImagePull", 'image "x" not found')
    assert not pull.started
    assert container_state(POD, "main").state == "absent"
    assert container_state(None, "main").state == "absent"


def test_scheduling_reads_the_condition() -> None:
    assert scheduling(POD) == (True, "node-1", "")
    pending = {
        "status": {
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "0/1 nodes are available: 1 Insufficient memory.",
                }
            ]
        }
    }
    assert scheduling(pending) == (False, "", "Unschedulable 0/1 nodes are available: 1 Insufficient memory.")
    assert scheduling(None) == (False, "", "")
    assert pod_reason({"status": {"reason": "DeadlineExceeded", "message": "Pod was active too long"}}) == (
        "DeadlineExceeded Pod was active too long"
    )


def _space(tmp_path: Path) -> JobSpace:
    root = tmp_path / "job"
    return JobSpace(job_id=7, queue="batches", root=root, workspace=root / "workspace")


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for p in parts:
        yield p


async def test_workspace_stages_files_within_the_secret_bound(tmp_path: Path) -> None:
    ws, space = PodWorkspace(), _space(tmp_path)
    await ws.prepare(space)
    await ws.write_files(space, {"a/b.txt": b"hello", "./c": b"x"})
    assert ws.staged(space).files == {"a/b.txt": b"hello", "c": b"x"}
    assert await ws.write_stream(space, "d.bin", _chunks(b"12", b"34"), limit=10) == 4
    with pytest.raises(safefs.TooLarge):
        await ws.write_stream(space, "e.bin", _chunks(b"x" * 11), limit=10)
    with pytest.raises(RuntimeFailure, match="exceed"):
        await ws.write_stream(space, "f.bin", _chunks(b"x" * MAX_STAGED_FILES), limit=2 * MAX_STAGED_FILES)
    with pytest.raises(ValueError):
        await ws.write_files(space, {"../escape": b""})
    assert set(ws.staged(space).files) == {"a/b.txt", "c", "d.bin"}
    with pytest.raises(RuntimeFailure, match=r"skip\.json"):
        await ws.take_file(space, "skip.json", 1024)
    await ws.cleanup(space)
    assert ws.jobs == {}


class _FlakyLogs:
    """pods/log that breaks off after `cut` bytes the first time, then serves the whole log."""

    def __init__(self, data: bytes, cut: int) -> None:
        self.data, self.cut, self.follows = data, cut, 0

    async def log(
        self, pod: str, container: str, *, follow: bool, limit_bytes: int = 0
    ) -> AsyncIterator[bytes]:
        from corral.errors import KubernetesAPIError

        self.follows += 1
        if self.follows == 1:
            yield self.data[: self.cut // 2]
            yield self.data[self.cut // 2 : self.cut]
            raise KubernetesAPIError(0, "connection reset")
        for i in range(0, len(self.data), 7):
            yield self.data[i : i + 7]


async def test_a_broken_log_stream_is_followed_again_without_loss_or_repeat(tmp_path: Path) -> None:
    from corral.executor.runtimes.kubernetes import follow
    from corral.executor.runtimes.kubernetes.settings import KubernetesSettings

    data = b"".join(b"line %d\n" % i for i in range(100))
    api = _FlakyLogs(data, cut=123)
    follower = follow.PodFollower(
        api,  # type: ignore[arg-type]
        KubernetesSettings(),
        "job",
        frontend_url="http://127.0.0.1:1",
        staged=None,  # type: ignore[arg-type]
        sink=None,  # type: ignore[arg-type]
        pod_log=None,  # type: ignore[arg-type]
        phases=follow.Phases(),
    )
    follower.watch.pod = {
        "metadata": {"name": "job-abcde"},
        "status": {"containerStatuses": [{"name": "c", "state": {"terminated": {"exitCode": 0}}}]},
    }
    follow.LOG_RETRY_S, saved = 0.01, follow.LOG_RETRY_S
    try:
        got = b"".join([c async for c in follower._log_chunks("c")])
    finally:
        follow.LOG_RETRY_S = saved
    assert got == data and api.follows == 2
