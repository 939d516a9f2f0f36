"""A job with 80,000 redactedValues on an executor that also runs an unrelated job (issue 9, item 4).

Before the fix the executor built the redactor for the big job on its event loop (~35-70 s, again on
every retry): heartbeats stopped, so the unrelated job on the same executor was requeued and failed.
Now the executor refuses more than MAX_VALUES values at once (the job fails with a clear message and is
not retried) and builds any redactor in a worker thread, so the other job's heartbeats keep coming.

The job is inserted through the store (as a Sourcegraph-shaped frontend would hand it out), not through
the producer API, which may refuse that many values at submit.
"""

from __future__ import annotations

import random
import string
import time
from pathlib import Path

from corral.executor.redact import MAX_VALUES
from corral.server.store.store import Store
from tests.conftest import bwrap_ok, require
from tests.e2e.kit import docker_job, logs_text, run_server, start_executor, wait_job, wait_log

FLOOD = 80_000  # redacted values in the big job


def _values(n: int) -> dict[str, str]:
    rng = random.Random(80)
    alphabet = string.ascii_letters + string.digits
    return {"".join(rng.choices(alphabet, k=rng.randint(20, 40))): f"[v{i}]" for i in range(n)}


def test_a_redaction_flood_fails_alone_and_the_other_job_keeps_its_heartbeats(tmp_path: Path) -> None:
    require(bwrap_ok(), "bubblewrap, cgroup v1 and root are needed for the shell runtime")
    with run_server(tmp_path, max_attempts=3) as server:
        start_executor(server, tmp_path, "shell", EXECUTOR_MAXIMUM_NUM_JOBS="2")
        # The unrelated job: runs ~8 s, printing as it goes; the server requeues it if its heartbeats
        # (every 1 s) stop for the stall window.
        steady = server.client.submit(
            "batches", docker_job("for i in 1 2 3 4 5 6 7 8; do echo tick-$i; sleep 1; done")
        )
        wait_log(server, steady["id"], "tick-1", timeout=60)
        store = Store(server.settings.db_url)
        try:
            big = store.enqueue("batches", docker_job("echo never-runs", redactedValues=_values(FLOOD)))
        finally:
            store.engine.dispose()
        t0 = time.monotonic()
        failed = wait_job(server, big["id"], timeout=120)
        refused_in = time.monotonic() - t0
        done = wait_job(server, steady["id"], timeout=120)
        big_logs, steady_logs = logs_text(server, big["id"]), logs_text(server, steady["id"])

    assert failed["state"] == "failed", failed
    assert failed["error"] == (
        f"the job has {FLOOD} redacted values; this executor redacts at most {MAX_VALUES}"
    ), failed
    assert failed["attempt"] == 1 and failed["numResets"] == 0, failed  # failed, not errored and retried
    assert "never-runs" not in big_logs
    assert refused_in < 30, f"the big job took {refused_in:.1f}s to be refused"
    assert done["state"] == "completed", (done["error"], done["outcome"], done["exitCodes"])
    assert done["attempt"] == 1 and done["numResets"] == 0, done  # its heartbeats never stopped
    assert "tick-8" in steady_logs
