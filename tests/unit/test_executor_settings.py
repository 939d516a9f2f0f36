"""ExecutorSettings.from_env: Sourcegraph's EXECUTOR_* variables, their defaults, Go durations and
sizes, and a ConfigError that names every bad variable at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.errors import ConfigError
from corral.executor.settings import ExecutorSettings, format_duration, parse_duration, parse_size

GOOD = {
    "EXECUTOR_FRONTEND_URL": "http://127.0.0.1:3080",
    "EXECUTOR_FRONTEND_PASSWORD": "p" * 20,
    "EXECUTOR_QUEUE_NAME": "batches",
}


def settings(**env: str) -> ExecutorSettings:
    merged = {**GOOD, **env}
    return ExecutorSettings.from_env({k: v for k, v in merged.items() if v is not None})


def problems(**env: str) -> str:
    with pytest.raises(ConfigError) as info:
        settings(**env)
    return info.value.message


def test_defaults():
    s = settings()
    assert s.frontend_url == "http://127.0.0.1:3080"
    assert s.frontend_password == "p" * 20
    assert s.queues == ["batches"] and not s.multi_queue
    assert s.runtime == "docker"
    assert s.queue_poll_interval == 1.0
    assert s.maximum_num_jobs == 1
    assert s.job_num_cpus == 4.0
    assert s.job_memory == 12 * 1024**3
    assert s.maximum_runtime_per_job == 30 * 60.0
    assert s.heartbeat_interval == 5.0
    assert s.num_total_jobs == 0 and s.max_active_time == 0.0
    assert s.keep_workspaces is False
    assert s.workspace_root == Path("/var/lib/corral/workspaces")
    assert s.docker_auth_config is None and s.docker_additional_mounts == []
    assert (s.job_uid, s.job_gid) == (None, None)  # a uid per job from the range
    assert s.job_uid_range == (200_000, 265_535)
    assert s.log_max_bytes == 8 * 1024 * 1024
    assert s.extensions is True
    assert s.vm_prefix == "executor"
    assert s.name  # generated: hostname-uuid
    assert settings().name != s.name  # a fresh name per executor


def test_trailing_slash_of_the_url_is_dropped_and_blank_values_count_as_unset():
    s = settings(EXECUTOR_FRONTEND_URL="http://127.0.0.1:3080/", EXECUTOR_MAXIMUM_NUM_JOBS="  ")
    assert s.frontend_url == "http://127.0.0.1:3080"
    assert s.maximum_num_jobs == 1


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("1m30s", 90.0),
        ("2h", 7200.0),
        ("30", 30.0),
        ("1.5s", 1.5),
        ("1h2m3s", 3723.0),
        ("250us", 0.00025),
        ("0", 0.0),
    ],
)
def test_go_durations(text: str, seconds: float):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "abc", "10x", "1m30", "s", "-5s", "1 m", "5s garbage"])
def test_bad_durations(text: str):
    with pytest.raises(ValueError):
        parse_duration(text)


def test_durations_through_the_environment():
    s = settings(
        EXECUTOR_QUEUE_POLL_INTERVAL="500ms",
        EXECUTOR_HEARTBEAT_INTERVAL="1m30s",
        EXECUTOR_MAXIMUM_RUNTIME_PER_JOB="2h",
        EXECUTOR_MAX_ACTIVE_TIME="30",
    )
    assert s.queue_poll_interval == 0.5
    assert s.heartbeat_interval == 90.0
    assert s.maximum_runtime_per_job == 7200.0
    assert s.max_active_time == 30.0


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("12G", 12 * 1024**3),
        ("512M", 512 * 1024**2),
        ("1Gi", 1024**3),
        ("64k", 64 * 1024),
        ("2T", 2 * 1024**4),
        ("1024", 1024),
        ("512MB", 512 * 1024**2),
        ("1.5G", int(1.5 * 1024**3)),
    ],
)
def test_sizes(text: str, size: int):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "G", "12X", "-1G", "twelve"])
def test_bad_sizes(text: str):
    with pytest.raises(ValueError):
        parse_size(text)


def test_sizes_through_the_environment():
    s = settings(EXECUTOR_JOB_MEMORY="512M", EXECUTOR_LOG_MAX_BYTES="1Gi")
    assert s.job_memory == 512 * 1024**2
    assert s.log_max_bytes == 1024**3


def test_queue_names():
    s = settings(EXECUTOR_QUEUE_NAME=None, EXECUTOR_QUEUE_NAMES="batches, codeintel,")
    assert s.queues == ["batches", "codeintel"] and s.multi_queue
    assert "EXECUTOR_QUEUE_NAME / EXECUTOR_QUEUE_NAMES" in problems(EXECUTOR_QUEUE_NAMES="a,b")
    assert "EXECUTOR_QUEUE_NAME / EXECUTOR_QUEUE_NAMES" in problems(EXECUTOR_QUEUE_NAME=None)
    assert "invalid queue name 'Bad Queue'" in problems(EXECUTOR_QUEUE_NAME="Bad Queue")


def test_required_url_and_password():
    msg = problems(EXECUTOR_FRONTEND_URL=None, EXECUTOR_FRONTEND_PASSWORD=None)
    assert "EXECUTOR_FRONTEND_URL: required" in msg
    assert "EXECUTOR_FRONTEND_PASSWORD: required" in msg
    assert "EXECUTOR_FRONTEND_URL" in problems(EXECUTOR_FRONTEND_URL="127.0.0.1:3080")
    assert "EXECUTOR_FRONTEND_URL" in problems(EXECUTOR_FRONTEND_URL="http://host/some/path")


def test_short_password_is_refused_by_name():
    msg = problems(EXECUTOR_FRONTEND_PASSWORD="p" * 19)
    assert "EXECUTOR_FRONTEND_PASSWORD" in msg and "20 characters" in msg
    assert "p" * 19 not in msg  # the secret itself is never echoed
    assert settings(EXECUTOR_FRONTEND_PASSWORD="p" * 20).frontend_password == "p" * 20


def test_every_malformed_variable_is_named_at_once():
    msg = problems(
        EXECUTOR_HEARTBEAT_INTERVAL="soon",
        EXECUTOR_JOB_MEMORY="lots",
        EXECUTOR_DOCKER_AUTH_CONFIG="{not json",
        EXECUTOR_KEEP_WORKSPACES="maybe",
        EXECUTOR_MAXIMUM_NUM_JOBS="two",
        EXECUTOR_JOB_NUM_CPUS="many",
    )
    for name in (
        "EXECUTOR_HEARTBEAT_INTERVAL",
        "EXECUTOR_JOB_MEMORY",
        "EXECUTOR_DOCKER_AUTH_CONFIG",
        "EXECUTOR_KEEP_WORKSPACES",
        "EXECUTOR_MAXIMUM_NUM_JOBS",
        "EXECUTOR_JOB_NUM_CPUS",
    ):
        assert name in msg, (name, msg)
    lines = msg.splitlines()[1:]
    assert len(lines) == 6, msg  # one line per problem
    assert "'soon' is not a duration" in msg
    assert "'lots' is not a size" in msg
    assert "not valid JSON" in msg
    assert "'maybe' is not a boolean" in msg


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("EXECUTOR_QUEUE_POLL_INTERVAL", "1 minute"),
        ("EXECUTOR_MAXIMUM_RUNTIME_PER_JOB", "1d"),
        ("EXECUTOR_LOG_MAX_BYTES", "8MiBs"),
        ("EXECUTOR_USE_FIRECRACKER", "yesplease"),
        ("EXECUTOR_USE_EXTENSIONS", "2"),
        ("EXECUTOR_NUM_TOTAL_JOBS", "-1"),
    ],
)
def test_one_malformed_variable_is_named(name: str, value: str):
    assert name in problems(**{name: value})


def test_docker_auth_config_must_have_the_auths_shape():
    auth = '{"auths": {"registry.example": {"auth": "dXNlcjpwYXNz"}}}'
    assert settings(EXECUTOR_DOCKER_AUTH_CONFIG=auth).docker_auth_config == {
        "auths": {"registry.example": {"auth": "dXNlcjpwYXNz"}}
    }
    assert "EXECUTOR_DOCKER_AUTH_CONFIG" in problems(EXECUTOR_DOCKER_AUTH_CONFIG="[1, 2]")
    assert "EXECUTOR_DOCKER_AUTH_CONFIG" in problems(EXECUTOR_DOCKER_AUTH_CONFIG='{"auths": []}')


@pytest.mark.parametrize(("raw", "value"), [("true", True), ("1", True), ("on", True), ("FALSE", False)])
def test_booleans(raw: str, value: bool):
    assert settings(EXECUTOR_KEEP_WORKSPACES=raw).keep_workspaces is value


def test_use_firecracker_selects_the_firecracker_runtime():
    assert settings(EXECUTOR_USE_FIRECRACKER="true").runtime == "firecracker"
    assert settings(EXECUTOR_USE_FIRECRACKER="false").runtime == "docker"
    assert settings(EXECUTOR_USE_FIRECRACKER="true", EXECUTOR_RUNTIME="firecracker").runtime == "firecracker"


def test_conflicting_runtime():
    msg = problems(EXECUTOR_USE_FIRECRACKER="true", EXECUTOR_RUNTIME="shell")
    assert "EXECUTOR_USE_FIRECRACKER" in msg and "EXECUTOR_RUNTIME=shell" in msg
    assert "EXECUTOR_RUNTIME" in problems(EXECUTOR_RUNTIME="podman")
    assert settings(EXECUTOR_USE_FIRECRACKER="false", EXECUTOR_RUNTIME="shell").runtime == "shell"


def test_old_firecracker_resource_names():
    s = settings(EXECUTOR_FIRECRACKER_NUM_CPUS="2", EXECUTOR_FIRECRACKER_MEMORY="6G")
    assert s.job_num_cpus == 2.0 and s.job_memory == 6 * 1024**3
    # the new names win over the old ones
    s = settings(
        EXECUTOR_FIRECRACKER_NUM_CPUS="2",
        EXECUTOR_JOB_NUM_CPUS="3",
        EXECUTOR_FIRECRACKER_MEMORY="6G",
        EXECUTOR_JOB_MEMORY="1G",
    )
    assert s.job_num_cpus == 3.0 and s.job_memory == 1024**3


def test_job_user():
    s = settings(EXECUTOR_JOB_USER="2000")
    assert (s.job_uid, s.job_gid) == (2000, 2000)
    s = settings(EXECUTOR_JOB_USER="2000:3000")
    assert (s.job_uid, s.job_gid) == (2000, 3000)
    for bad in ("0", "0:0", "root", "1000:x"):
        assert "EXECUTOR_JOB_USER" in problems(EXECUTOR_JOB_USER=bad), bad


def test_job_uid_range():
    s = settings(EXECUTOR_JOB_UID_RANGE="300000-300009", EXECUTOR_JOB_UID_LOCK_DIR="/tmp/locks")
    assert s.job_uid_range == (300_000, 300_009)
    assert s.job_uid_lock_dir == Path("/tmp/locks")
    for bad in ("0-10", "10-5", "abc", "100000"):
        assert "EXECUTOR_JOB_UID_RANGE" in problems(EXECUTOR_JOB_UID_RANGE=bad), bad
    assert "EXECUTOR_JOB_UID_RANGE" in problems(
        EXECUTOR_JOB_UID_RANGE="300000-300001", EXECUTOR_MAXIMUM_NUM_JOBS="3"
    )


def test_vm_prefix():
    assert settings(EXECUTOR_VM_PREFIX="exec-2").vm_prefix == "exec-2"
    for bad in ("Exec", "-x", "a" * 33, "a/b"):
        assert "EXECUTOR_VM_PREFIX" in problems(EXECUTOR_VM_PREFIX=bad), bad


def test_maximum_num_jobs_must_be_at_least_one():
    assert "EXECUTOR_MAXIMUM_NUM_JOBS: must be at least 1" in problems(EXECUTOR_MAXIMUM_NUM_JOBS="0")
    assert settings(EXECUTOR_MAXIMUM_NUM_JOBS="4").maximum_num_jobs == 4


def test_other_values():
    s = settings(
        EXECUTOR_DOCKER_ADDITIONAL_MOUNTS="type=bind,src=/a,dst=/a;;type=volume,src=v,dst=/v",
        EXECUTOR_WORKSPACE_ROOT="/tmp/ws",
        EXECUTOR_NAME="exec-1",
        EXECUTOR_USE_EXTENSIONS="false",
        EXECUTOR_DOCKER_RUNTIME="runsc",
    )
    assert s.docker_additional_mounts == ["type=bind,src=/a,dst=/a", "type=volume,src=v,dst=/v"]
    assert s.workspace_root == Path("/tmp/ws")
    assert s.name == "exec-1"
    assert s.extensions is False
    assert s.docker_runtime == "runsc"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(1800, "30m0s"), (3600, "1h0m0s"), (5, "5s"), (90, "1m30s"), (3723, "1h2m3s"), (2, "2s")],
)
def test_format_duration(seconds: float, text: str):
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("EXECUTOR_HEARTBEAT_INTERVAL", "0s", "greater than 0"),
        ("EXECUTOR_QUEUE_POLL_INTERVAL", "0", "greater than 0"),
        ("EXECUTOR_CLEANUP_TASK_INTERVAL", "0ms", "greater than 0"),
        ("EXECUTOR_MAXIMUM_RUNTIME_PER_JOB", "0", "greater than 0"),
        ("EXECUTOR_JOB_NUM_CPUS", "-1", "greater than or equal to 0"),
        ("EXECUTOR_JOB_NUM_CPUS", "nan", "finite"),
    ],
)
def test_values_that_would_spin_or_break_every_job_are_refused(name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=f"{name}: .*{message}"):
        ExecutorSettings.from_env({**GOOD, name: value})


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("t", True),
        ("T", True),
        ("TRUE", True),
        ("1", True),
        ("f", False),
        ("F", False),
        ("False", False),
        ("0", False),
    ],
)
def test_booleans_take_gos_forms(value: str, expected: bool) -> None:
    assert ExecutorSettings.from_env({**GOOD, "EXECUTOR_KEEP_WORKSPACES": value}).keep_workspaces is expected
