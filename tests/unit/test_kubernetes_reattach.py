"""Which Jobs a restarted executor offers the server for reattach (reattach._orphan): a Job's labels
are the cluster's, so its name, job label and attempt must agree with each other and with a queue
this executor serves."""

from __future__ import annotations

from typing import Any

from corral.executor.runtimes.base import LABEL_JOB, Orphan
from corral.executor.runtimes.kubernetes import manifests
from corral.executor.runtimes.kubernetes.reattach import _orphan

OWNER = "t1-8080"


def meta(queue: str, job_id: int, attempt: int, **override: Any) -> dict[str, Any]:
    labels = {LABEL_JOB: manifests.label_value(f"{queue}-{job_id}"), manifests.LABEL_ATTEMPT: str(attempt)}
    labels.update(override.pop("labels", {}))
    name = manifests.job_names(OWNER, queue, job_id, attempt).job
    return {"name": name, "labels": labels, **override}


def test_a_job_of_a_served_queue_is_offered_with_its_attempt() -> None:
    assert _orphan(meta("batches", 7, 2), OWNER, ["batches"]) == Orphan(
        queue="batches", job_id=7, attempt=2, name=manifests.job_names(OWNER, "batches", 7, 2).job
    )
    # a queue name with dashes: the job label is split at the queue, not at the first dash
    assert _orphan(meta("code-intel", 12, 1), OWNER, ["batches", "code-intel"]) is not None


def test_labels_that_do_not_agree_with_the_name_are_not_offered() -> None:
    assert _orphan(meta("batches", 7, 2), OWNER, ["other"]) is None  # a queue this executor does not serve
    assert _orphan(meta("batches", 7, 2, labels={manifests.LABEL_ATTEMPT: "3"}), OWNER, ["batches"]) is None
    assert _orphan(meta("batches", 7, 2, labels={LABEL_JOB: "batches-8"}), OWNER, ["batches"]) is None
    assert _orphan(meta("batches", 7, 2, name="corral-other"), OWNER, ["batches"]) is None
    assert _orphan(meta("batches", 7, 2), "another-owner", ["batches"]) is None
    for attempt in ("", "x", "-1", "1" * 12):
        hostile = meta("batches", 7, 2, labels={manifests.LABEL_ATTEMPT: attempt})
        assert _orphan(hostile, OWNER, ["batches"]) is None
    assert _orphan({"name": "corral-x", "labels": {}}, OWNER, ["batches"]) is None
