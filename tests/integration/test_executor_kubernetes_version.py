"""Review R3: the kubernetes runtime's heartbeat field `kubernetesVersion` (the API server's
gitVersion, as `dockerVersion` is the docker runtime's) is kept and listed (before: the server's
heartbeat model did not know it and dropped it)."""

from __future__ import annotations

from tests.serverkit import Kit


def test_the_kubernetes_version_of_a_heartbeat_is_listed(kit: Kit) -> None:
    kit.submit()
    job = kit.take()
    kit.heartbeat("batches", [job["id"]], dockerVersion="", kubernetesVersion="v1.31.2")
    (ex,) = kit.admin.get("/api/v1/executors").json()
    assert ex["kubernetesVersion"] == "v1.31.2" and ex["dockerVersion"] == ""
    kit.heartbeat("batches", [job["id"]], kubernetesVersion="v" + "9" * 100)
    (ex,) = kit.admin.get("/api/v1/executors").json()
    assert ex["kubernetesVersion"] == "v" + "9" * 63  # bounded as every telemetry field
