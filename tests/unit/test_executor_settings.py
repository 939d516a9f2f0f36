"""ExecutorSettings.from_env: Sourcegraph's EXECUTOR_* variables, their defaults, Go durations and
sizes, and a ConfigError that names every bad variable at once."""

from __future__ import annotations

import asyncio
import base64
import http.server
import json
import os
import platform
import re
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from corral import __version__
from corral.errors import ConfigError, CorralError
from corral.executor.hostcheck import (
    Findings,
    HostFacts,
    check_host,
    filesystem_type,
    limit_findings,
    mount_type,
)
from corral.executor.main import build_worker, probe_server
from corral.executor.runtimes.docker.settings import DockerSettings, parse_mount_spec
from corral.executor.runtimes.kubernetes.settings import KubernetesSettings
from corral.executor.runtimes.shell.settings import ShellSettings
from corral.executor.settings import _COMPOSITE, ExecutorSettings, format_duration, parse_duration, parse_size
from corral.executor.settingsbase import env_names
from corral.executor.variables import VARIABLES
from corral.executor.workspace.host import check_quota_support
from corral.protocol import EXTENSIONS
from corral.server.settings import ServerSettings
from tests.conftest import require

GOOD = {
    "EXECUTOR_FRONTEND_URL": "http://127.0.0.1:3080",
    "EXECUTOR_FRONTEND_PASSWORD": "Vx3kq9Lw2RzT7mN4pB8dYc1F",  # no placeholder, no warning
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
    assert s.frontend_password == GOOD["EXECUTOR_FRONTEND_PASSWORD"]
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


@pytest.mark.parametrize(
    "value", ["[" * 100_000 + "]" * 100_000, '{"auths": ' * 50_000 + "{}" + "}" * 50_000]
)
def test_an_auth_config_nested_too_deeply_is_a_config_error(value: str) -> None:
    """Review of issue 11: json.loads raised a bare RecursionError out of from_env."""
    assert "EXECUTOR_DOCKER_AUTH_CONFIG: not valid JSON: nested too deeply" in problems(
        EXECUTOR_DOCKER_AUTH_CONFIG=value
    )


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


# -- booleans: Go's strconv.ParseBool, exactly (Sourcegraph's env.BaseConfig.GetBool) ---------------
def _bool_variables() -> list[str]:
    """Every variable of a boolean setting, found from the models (a new one cannot be missed)."""
    names = ["EXECUTOR_USE_FIRECRACKER"]  # read by _composite, not by a field
    for model in (ExecutorSettings, DockerSettings, ShellSettings):
        for info in model.model_fields.values():
            if info.annotation is bool:
                assert isinstance(info.validation_alias, str)
                names.append(info.validation_alias)
    return names


BOOL_VARIABLES = _bool_variables()
GO_FORMS = [
    *((v, True) for v in "1 t T TRUE true True".split()),
    *((v, False) for v in "0 f F FALSE false False".split()),
]


def _bool_value(s: ExecutorSettings, name: str) -> bool:
    values = {
        "EXECUTOR_USE_FIRECRACKER": s.runtime == "firecracker",
        "EXECUTOR_KEEP_WORKSPACES": s.keep_workspaces,
        "EXECUTOR_USE_EXTENSIONS": s.extensions,
        "EXECUTOR_DOCKER_ADD_HOST_GATEWAY": s.docker.add_host_gateway,
        "EXECUTOR_NETWORK_ALL_JOBS": s.network_all_jobs,
    }
    return values[name]


def test_the_boolean_settings_are_found() -> None:
    assert set(BOOL_VARIABLES) == {
        "EXECUTOR_USE_FIRECRACKER",
        "EXECUTOR_KEEP_WORKSPACES",
        "EXECUTOR_USE_EXTENSIONS",
        "EXECUTOR_DOCKER_ADD_HOST_GATEWAY",
        "EXECUTOR_NETWORK_ALL_JOBS",
    }


@pytest.mark.parametrize("name", BOOL_VARIABLES)
@pytest.mark.parametrize(("value", "expected"), GO_FORMS)
def test_every_boolean_takes_each_of_gos_forms(name: str, value: str, expected: bool) -> None:
    assert _bool_value(settings(**{name: value}), name) is expected


@pytest.mark.parametrize("name", BOOL_VARIABLES)
@pytest.mark.parametrize(
    "value",
    ["yes", "no", "on", "off", "tRuE", "fALSE", "2", "-1", "y", "truee", " true", "false ", "\t1", "0\n"],
)
def test_every_boolean_refuses_what_go_refuses(name: str, value: str) -> None:
    # Go's ParseBool takes exactly its twelve forms; Sourcegraph does not lowercase before it
    msg = problems(**{name: value})
    assert f"{name}: {value!r} is not a boolean" in msg, msg


# -- the table of variables (corral.executor.variables) ----------------------------------------------
# Every variable Config.Load reads in Sourcegraph's cmd/executor/internal/config/config.go
# (sourcegraph/sourcegraph-public-snapshot), in its order.
SOURCEGRAPH_CONFIG_GO = """
EXECUTOR_FRONTEND_URL EXECUTOR_FRONTEND_PASSWORD EXECUTOR_QUEUE_NAME EXECUTOR_QUEUE_NAMES
EXECUTOR_QUEUE_POLL_INTERVAL EXECUTOR_MAXIMUM_NUM_JOBS EXECUTOR_USE_FIRECRACKER
EXECUTOR_FIRECRACKER_IMAGE EXECUTOR_FIRECRACKER_KERNEL_IMAGE EXECUTOR_FIRECRACKER_SANDBOX_IMAGE
EXECUTOR_VM_STARTUP_SCRIPT_PATH EXECUTOR_VM_PREFIX EXECUTOR_KEEP_WORKSPACES
EXECUTOR_DOCKER_HOST_MOUNT_PATH EXECUTOR_JOB_NUM_CPUS EXECUTOR_FIRECRACKER_NUM_CPUS EXECUTOR_JOB_MEMORY
EXECUTOR_FIRECRACKER_MEMORY EXECUTOR_FIRECRACKER_DISK_SPACE EXECUTOR_FIRECRACKER_BANDWIDTH_INGRESS
EXECUTOR_FIRECRACKER_BANDWIDTH_EGRESS EXECUTOR_MAXIMUM_RUNTIME_PER_JOB EXECUTOR_CLEANUP_TASK_INTERVAL
EXECUTOR_NUM_TOTAL_JOBS NODE_EXPORTER_URL DOCKER_REGISTRY_NODE_EXPORTER_URL
EXECUTOR_DOCKER_ADDITIONAL_MOUNTS EXECUTOR_MAX_ACTIVE_TIME EXECUTOR_DOCKER_REGISTRY_MIRROR_URL
EXECUTOR_KUBERNETES_CONFIG_PATH EXECUTOR_KUBERNETES_NODE_NAME EXECUTOR_KUBERNETES_NODE_SELECTOR
EXECUTOR_KUBERNETES_NODE_REQUIRED_AFFINITY_MATCH_EXPRESSIONS
EXECUTOR_KUBERNETES_NODE_REQUIRED_AFFINITY_MATCH_FIELDS EXECUTOR_KUBERNETES_POD_AFFINITY
EXECUTOR_KUBERNETES_POD_ANTI_AFFINITY EXECUTOR_KUBERNETES_NODE_TOLERATIONS EXECUTOR_KUBERNETES_NAMESPACE
EXECUTOR_KUBERNETES_PERSISTENCE_VOLUME_NAME EXECUTOR_KUBERNETES_RESOURCE_LIMIT_CPU
EXECUTOR_KUBERNETES_RESOURCE_LIMIT_MEMORY EXECUTOR_KUBERNETES_RESOURCE_REQUEST_CPU
EXECUTOR_KUBERNETES_RESOURCE_REQUEST_MEMORY EXECUTOR_DOCKER_ADD_HOST_GATEWAY EXECUTOR_DOCKER_AUTH_CONFIG
KUBERNETES_JOB_DEADLINE KUBERNETES_KEEP_JOBS KUBERNETES_RUN_AS_USER KUBERNETES_RUN_AS_GROUP
KUBERNETES_FS_GROUP KUBERNETES_SINGLE_JOB_POD KUBERNETES_JOB_VOLUME_TYPE KUBERNETES_JOB_VOLUME_SIZE
KUBERNETES_ADDITIONAL_JOB_VOLUMES KUBERNETES_ADDITIONAL_JOB_VOLUME_MOUNTS
KUBERNETES_SINGLE_JOB_STEP_IMAGE KUBERNETES_GIT_CA_CERT KUBERNETES_JOB_ANNOTATIONS
KUBERNETES_JOB_POD_ANNOTATIONS KUBERNETES_IMAGE_PULL_SECRETS
""".split()
# The ones corral does not honour yet (issue 11, "Configuration"): each warns at start-up.
NOT_YET = [
    "EXECUTOR_FIRECRACKER_IMAGE",
    "EXECUTOR_FIRECRACKER_KERNEL_IMAGE",
    "EXECUTOR_FIRECRACKER_SANDBOX_IMAGE",
    "EXECUTOR_FIRECRACKER_BANDWIDTH_INGRESS",
    "EXECUTOR_FIRECRACKER_BANDWIDTH_EGRESS",
    "EXECUTOR_VM_STARTUP_SCRIPT_PATH",
    "EXECUTOR_DOCKER_HOST_MOUNT_PATH",
    "EXECUTOR_DOCKER_REGISTRY_MIRROR_URL",
    "NODE_EXPORTER_URL",
    "DOCKER_REGISTRY_NODE_EXPORTER_URL",
]


READ = set(_COMPOSITE).union(
    *(env_names(m) for m in (ExecutorSettings, DockerSettings, ShellSettings, KubernetesSettings))
)


def test_every_variable_of_sourcegraphs_config_go_is_in_the_table() -> None:
    assert len(SOURCEGRAPH_CONFIG_GO) == 60
    assert [n for n in SOURCEGRAPH_CONFIG_GO if n not in VARIABLES] == []
    assert {n for n, v in VARIABLES.items() if v.sourcegraph} == set(SOURCEGRAPH_CONFIG_GO)


def test_every_variable_the_settings_read_is_in_the_table_and_honoured() -> None:
    assert sorted(READ - set(VARIABLES)) == []
    assert sorted(n for n in READ if not VARIABLES[n].runtimes) == []


def test_a_variable_is_marked_honoured_only_when_a_settings_model_reads_it() -> None:
    # what a firecracker or kubernetes runtime must do to mark its variables: read them, then mark them
    assert sorted(n for n, v in VARIABLES.items() if v.runtimes and n not in READ) == []
    assert sorted(n for n, v in VARIABLES.items() if not v.runtimes) == sorted(NOT_YET)


@pytest.mark.parametrize("name", sorted(n for n, v in VARIABLES.items() if v.default and v.runtimes))
def test_the_tables_defaults_are_the_settings_defaults(name: str) -> None:
    def dump(s: ExecutorSettings) -> dict[str, object]:
        return s.model_dump(exclude={"name"})

    assert dump(settings(**{name: VARIABLES[name].default})) == dump(settings())


def test_kubernetes_single_job_pod_defaults_to_true_as_the_seeds_say() -> None:
    # Sourcegraph's config.go says "false"; the seeds say the newest Sourcegraph is single-pod
    assert VARIABLES["KUBERNETES_SINGLE_JOB_POD"].default == "true"


def test_a_good_configuration_has_no_warnings() -> None:
    assert settings().warnings == []
    assert settings(EXECUTOR_RUNTIME="shell", EXECUTOR_KEEP_WORKSPACES="true", PATH="/usr/bin").warnings == []


@pytest.mark.parametrize("name", NOT_YET)
def test_a_variable_no_runtime_honours_yet_warns_by_name(name: str) -> None:
    assert settings(**{name: "x"}).warnings == [
        f"{name} is recognised but not supported by the docker runtime yet: ignored"
    ]
    assert settings(EXECUTOR_RUNTIME="shell", **{name: "x"}).warnings == [
        f"{name} is recognised but not supported by the shell runtime yet: ignored"
    ]


def test_a_variable_of_another_runtime_warns() -> None:
    s = settings(
        EXECUTOR_RUNTIME="shell", EXECUTOR_DOCKER_ADD_HOST_GATEWAY="true", EXECUTOR_DOCKER_RUNTIME="runsc"
    )
    assert s.warnings == [
        "EXECUTOR_DOCKER_ADD_HOST_GATEWAY applies to the docker runtime only, not to shell "
        "(EXECUTOR_RUNTIME): ignored",
        "EXECUTOR_DOCKER_RUNTIME applies to the docker runtime only, not to shell "
        "(EXECUTOR_RUNTIME): ignored",
    ]
    assert settings(EXECUTOR_DOCKER_ADD_HOST_GATEWAY="true").warnings == []  # docker: honoured


@pytest.mark.parametrize(
    ("typo", "meant"),
    [
        ("EXECUTOR_MAXIMUM_NUM_JOB", "EXECUTOR_MAXIMUM_NUM_JOBS"),
        ("EXECUTOR_QUEUE_NAMESS", "EXECUTOR_QUEUE_NAMES"),
        ("EXECUTOR_JOB_MEMMORY", "EXECUTOR_JOB_MEMORY"),
        ("EXECUTOR_KEEP_WORKSPACE", "EXECUTOR_KEEP_WORKSPACES"),
        ("EXECUTOR_DOCKER_AUTH_CONFIGS", "EXECUTOR_DOCKER_AUTH_CONFIG"),
    ],
)
def test_an_unknown_executor_variable_warns_with_the_closest_name(typo: str, meant: str) -> None:
    assert settings(**{typo: "2"}).warnings == [
        f"{typo} is not a variable corral knows: ignored (did you mean {meant}?)"
    ]


def test_an_unknown_variable_far_from_every_name_gets_no_suggestion() -> None:
    assert settings(EXECUTOR_ZZZ="1").warnings == ["EXECUTOR_ZZZ is not a variable corral knows: ignored"]


def test_only_executor_names_count_as_typos_and_service_links_are_not_settings() -> None:
    s = settings(
        PATH="/usr/bin",
        KUBERNETES_SERVICE_HOST="10.0.0.1",  # set in every pod: not a setting
        KUBERNETES_SERVICE_PORT="443",
        EXECUTOR_SERVICE_HOST="10.0.0.2",  # a Service named "executor" in the pod's namespace
        EXECUTOR_SERVICE_PORT_HTTP="8080",
        EXECUTOR_PORT="tcp://10.0.0.2:8080",
        EXECUTOR_PORT_8080_TCP_ADDR="10.0.0.2",
        EXECUTOR_MAXIMUM_NUM_JOB="  ",  # blank counts as unset
    )
    assert s.warnings == []


def test_warnings_from_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in {
        **GOOD,
        "EXECUTOR_MAXIMUM_NUM_JOB": "3",
        "NODE_EXPORTER_URL": "http://127.0.0.1:9100",
    }.items():
        monkeypatch.setenv(k, v)
    assert ExecutorSettings.from_env().warnings == [
        "EXECUTOR_MAXIMUM_NUM_JOB is not a variable corral knows: ignored "
        "(did you mean EXECUTOR_MAXIMUM_NUM_JOBS?)",
        "NODE_EXPORTER_URL is recognised but not supported by the docker runtime yet: ignored",
    ]


def test_variables_that_match_a_field_name_in_another_case_are_not_settings() -> None:
    # SHELL=/bin/bash is set in every login shell: it is not the `shell` field (nor DOCKER `docker`)
    s = settings(SHELL="/bin/bash", DOCKER="x", NAME="someone", RUNTIME="podman", runtime="podman")
    assert s.runtime == "docker" and s.name != "someone"
    assert s.docker.add_host_gateway is False


# -- EXECUTOR_SRC_CLI_PATH: src-cli for CLI steps of a Sourcegraph server's jobs ------------------------
def _executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return path


def test_src_cli_path_defaults_to_src_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = _executable(tmp_path / "bin" / "src")
    monkeypatch.setenv("PATH", str(src.parent))
    assert settings().src_cli_path == str(src)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert settings().src_cli_path is None  # not installed: a Sourcegraph job's CLI steps fail


def test_src_cli_path_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = _executable(tmp_path / "opt" / "src-5.2")
    assert settings(EXECUTOR_SRC_CLI_PATH=str(src)).src_cli_path == str(src)
    monkeypatch.setenv("PATH", str(src.parent))
    assert settings(EXECUTOR_SRC_CLI_PATH="src-5.2").src_cli_path == str(src)  # a name: looked up
    assert "EXECUTOR_SRC_CLI_PATH: 'nosuch-src' is not on PATH" in problems(
        EXECUTOR_SRC_CLI_PATH="nosuch-src"
    )
    assert "must be an absolute path" in problems(EXECUTOR_SRC_CLI_PATH="bin/src")


def test_src_cli_path_must_be_an_executable_file(tmp_path: Path) -> None:
    """A directory, a missing path or a file that cannot run is refused at start-up (review of
    issue 11: /tmp was bound into every sandbox, a missing path broke every sandbox start)."""
    plain = tmp_path / "src"
    plain.write_text("not executable")
    for value in ["/nonexistent/src", "/tmp", str(tmp_path), str(plain)]:
        assert f"EXECUTOR_SRC_CLI_PATH: {value!r} is not an executable file" in problems(
            EXECUTOR_SRC_CLI_PATH=value
        )


def test_only_src_clis_file_is_bound_into_the_cli_sandbox(tmp_path: Path) -> None:
    from corral.executor.runtimes.registry import cli_binds

    src = _executable(tmp_path / "opt" / "sourcegraph" / "src")
    binds = cli_binds(settings(EXECUTOR_SRC_CLI_PATH=str(src)))
    assert str(src) in binds and str(src.parent) not in binds and str(tmp_path) not in binds
    assert str(src) not in cli_binds(settings())
    link = tmp_path / "bin" / "src"  # a link: bound at the path the steps run (mount follows it)
    link.parent.mkdir()
    link.symlink_to(src)
    assert str(link) in cli_binds(settings(EXECUTOR_SRC_CLI_PATH=str(link)))


def _venv(root: Path) -> Path:
    (root / "pyvenv.cfg").parent.mkdir(parents=True, exist_ok=True)
    (root / "pyvenv.cfg").write_text("home = /usr/bin\n")
    return _executable(root / "bin" / "corral")


def test_corrals_cli_binds_its_virtualenv_else_only_the_file(tmp_path: Path) -> None:
    from corral.executor.runtimes.registry import cli_binds

    cli = _venv(tmp_path / "opt" / "corral-venv")
    binds = cli_binds(settings(EXECUTOR_CLI_PATH=str(cli)))
    assert str(tmp_path / "opt" / "corral-venv") in binds  # its site-packages are needed
    alone = _executable(tmp_path / "tools" / "corral")  # no pyvenv.cfg above it
    binds = cli_binds(settings(EXECUTOR_CLI_PATH=str(alone)))
    assert str(alone) in binds and str(alone.parent) not in binds
    assert not [b for b in cli_binds(settings(EXECUTOR_CLI_PATH=str(tmp_path / "nosuch"))) if "nosuch" in b]


def test_a_cli_install_that_would_expose_a_home_or_the_workspaces_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from corral.executor.runtimes.registry import SENSITIVE_DIRS, _check_bind, cli_binds

    home = tmp_path / "alice"
    cli = _venv(home)  # a "venv" whose root is a home directory
    monkeypatch.setenv("HOME", str(home))
    with pytest.raises(
        ConfigError, match=re.escape(f"EXECUTOR_CLI_PATH={cli}: binding {home} ") + ".*a home"
    ):
        cli_binds(settings(EXECUTOR_CLI_PATH=str(cli)))
    monkeypatch.setenv("HOME", "/root")
    venv = tmp_path / "venv"
    cli = _venv(venv)
    with pytest.raises(ConfigError, match=r"would show .*EXECUTOR_WORKSPACE_ROOT"):
        cli_binds(settings(EXECUTOR_CLI_PATH=str(cli), EXECUTOR_WORKSPACE_ROOT=str(venv / "ws")))
    inside = _executable(tmp_path / "ws" / "job" / "src")
    with pytest.raises(ConfigError, match="lies in EXECUTOR_WORKSPACE_ROOT"):
        cli_binds(settings(EXECUTOR_SRC_CLI_PATH=str(inside), EXECUTOR_WORKSPACE_ROOT=str(tmp_path / "ws")))
    assert {"/", "/tmp", "/root", "/etc", "/home"} <= set(SENSITIVE_DIRS)
    for place in ["/", "/tmp", "/root", "/etc", "/var"]:  # /var holds /var/tmp
        with pytest.raises(ConfigError, match=f"binding {place} "):
            _check_bind(place, "EXECUTOR_CLI_PATH=x", list(SENSITIVE_DIRS), str(tmp_path / "ws"))


# -- EXECUTOR_FRONTEND_URL: a path prefix is kept; the rest is checked ---------------------------------
@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("http://127.0.0.1:3080", "http://127.0.0.1:3080"),
        ("http://127.0.0.1:3080/sg", "http://127.0.0.1:3080/sg"),  # behind a proxy at /sg
        ("http://127.0.0.1:3080/sg/", "http://127.0.0.1:3080/sg"),
        ("https://Sourcegraph.Example/a//b/", "https://sourcegraph.example/a/b"),
        ("HTTP://[::1]:8080/x", "http://[::1]:8080/x"),
        ("http://localhost", "http://localhost"),
    ],
)
def test_the_frontend_url_keeps_its_path_prefix_normalised(given: str, kept: str) -> None:
    assert settings(EXECUTOR_FRONTEND_URL=given).frontend_url == kept


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("127.0.0.1:3080", "must start with http:// or https://"),
        ("ftp://127.0.0.1", "must start with http:// or https://"),
        ("http://", "has no host"),
        ("http:///sg", "has no host"),
        ("http://127.0.0.1:99999", "has an invalid port"),
        ("http://127.0.0.1:0", "has an invalid port"),
        ("http://127.0.0.1:x", "has an invalid port"),
        ("http://127.0.0.1/sg?x=1", "must not have a query"),
        ("http://127.0.0.1/sg#top", "must not have a query (?...) or fragment"),
        ("http://127.0.0.1/a/../b", "must not contain . or .. segments"),
        ("http://127.0.0.1/a b", "must not contain blanks"),
    ],
)
def test_a_bad_frontend_url_is_refused_with_the_reason(url: str, why: str) -> None:
    msg = problems(EXECUTOR_FRONTEND_URL=url)
    assert "EXECUTOR_FRONTEND_URL: " in msg and why in msg, msg


def test_credentials_in_the_frontend_url_are_refused_and_never_echoed() -> None:
    msg = problems(EXECUTOR_FRONTEND_URL="https://admin:hunter2-secret@sg.example/")
    assert "EXECUTOR_FRONTEND_URL: must not carry credentials" in msg
    assert "hunter2" not in msg and "admin" not in msg
    assert "token=abc123" not in problems(EXECUTOR_FRONTEND_URL="http://sg.example/?token=abc123")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("u:hunter2pass@h", "'***@h'"),  # no scheme: urlsplit sees no userinfo, yet it is one
        ("hunter2pass@sg.example:3080", "'***@sg.example:3080'"),
        ("ftp:hunter2pass@h/x", "'***@h/x'"),
        ("ws://u:hunter2pass@h/", None),  # a userinfo urlsplit finds: refused without the URL
        ("u:p@ss:hunter2pass@h", "'***@h'"),
    ],
)
def test_a_url_holding_an_at_sign_is_never_echoed_with_what_precedes_it(url: str, shown: str | None) -> None:
    msg = problems(EXECUTOR_FRONTEND_URL=url)
    assert "EXECUTOR_FRONTEND_URL: " in msg and "hunter2pass" not in msg, msg
    if shown is not None:
        assert shown in msg, msg


# -- EXECUTOR_DOCKER_ADDITIONAL_MOUNTS: Docker's --mount specs, checked at start-up ---------------------
# The cases of Sourcegraph's internal/docker/mount_test.go (TestParseMount), as Engine API mounts.
@pytest.mark.parametrize(
    ("spec", "mount"),
    [
        ("type=bind,source=/foo,target=/bar", {"Type": "bind", "Source": "/foo", "Target": "/bar"}),
        (
            "type=bind,source=/foo,target=/bar,readonly",
            {"Type": "bind", "Source": "/foo", "Target": "/bar", "ReadOnly": True},
        ),
        ("type=volume,source=foo,target=/bar", {"Type": "volume", "Source": "foo", "Target": "/bar"}),
        ("type=tmpfs,target=/bar", {"Type": "tmpfs", "Target": "/bar"}),
        (
            "src=cache,dst=/cache",
            {"Type": "volume", "Source": "cache", "Target": "/cache"},
        ),  # default: volume
        (
            "Type=BIND,Source=/a,Destination=/b,ro=false,bind-propagation=rslave,bind-nonrecursive",
            {
                "Type": "bind",
                "Source": "/a",
                "Target": "/b",
                "ReadOnly": False,
                "BindOptions": {"Propagation": "rslave", "NonRecursive": True},
            },
        ),
        (
            "type=volume,source=sshvolume,target=/app,volume-opt=sshcmd=test@node2:/home/test,"
            "volume-opt=password=testpassword,volume-driver=vieux/sshfs,volume-label=a=b,volume-nocopy=1",
            {
                "Type": "volume",
                "Source": "sshvolume",
                "Target": "/app",
                "VolumeOptions": {
                    "NoCopy": True,
                    "Labels": {"a": "b"},
                    "DriverConfig": {
                        "Name": "vieux/sshfs",
                        "Options": {"sshcmd": "test@node2:/home/test", "password": "testpassword"},
                    },
                },
            },
        ),
        (
            "type=tmpfs,target=/scratch,tmpfs-size=64m,tmpfs-mode=1770",
            {
                "Type": "tmpfs",
                "Target": "/scratch",
                "TmpfsOptions": {"SizeBytes": 64 * 1024**2, "Mode": 0o1770},
            },
        ),
        ('"type=bind","source=/a,b",target=/c', {"Type": "bind", "Source": "/a,b", "Target": "/c"}),  # CSV
    ],
)
def test_mount_specs_are_read_as_dockers_cli_reads_them(spec: str, mount: dict[str, object]) -> None:
    assert parse_mount_spec(spec) == mount
    assert settings(EXECUTOR_DOCKER_ADDITIONAL_MOUNTS=spec).docker.additional_mounts == [spec]


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        ("type=bind,source=/foo,target=/bar,baz", "invalid field 'baz': must be a key=value pair"),
        ("type=bind,source=/foo,target=/bar,readonly=baz", "invalid value for readonly (true or false)"),
        ("type=bind,source=/foo,target=/bar,bind-nonrecursive=baz", "invalid value for bind-nonrecursive"),
        ("type=bind,source=/foo,target=/bar,volume-nocopy=baz", "invalid value for volume-nocopy"),
        ("type=tmpfs,target=/bar,tmpfs-size=baz", "invalid value for tmpfs-size"),
        ("type=tmpfs,target=/bar,tmpfs-mode=baz", "invalid value for tmpfs-mode"),
        ("foo=baz", "unexpected key 'foo'"),
        ("source=/foo", "needs an absolute target="),
        (
            "type=bind,source=/foo,destination=/bar,volume-nocopy",
            "cannot mix 'volume-*' options with mount type 'bind'",
        ),
        ("type=volume,source=foo,destination=/bar,bind-nonrecursive", "cannot mix 'bind-*' options"),
        ("type=volume,source=/foo,destination=/bar,tmpfs-size=42", "cannot mix 'tmpfs-*' options"),
        ("type=npipe,source=/a,target=/b", "type must be bind, volume or tmpfs, not 'npipe'"),
        ("type=bind,source=rel,target=/b", "a bind mount needs an absolute source="),
        ("type=volume,source=v,target=rel", "needs an absolute target="),
        ("type=tmpfs,source=/a,target=/b", "a tmpfs mount takes no source="),
        ('type=bind,"source=/a,target=/b', "not a CSV list"),
        # mounts joined with "," instead of ";" (Sourcegraph's "incorrect separator" check)
        (
            "type=bind,source=/a,target=/a,type=bind,source=/b,target=/b",
            "has two targets: separate mounts with ';'",
        ),
    ],
)
def test_a_bad_mount_spec_stops_the_executor_naming_the_variable(spec: str, error: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(error)):
        parse_mount_spec(spec)
    msg = problems(EXECUTOR_DOCKER_ADDITIONAL_MOUNTS=f"type=tmpfs,target=/ok;{spec}")
    assert f"EXECUTOR_DOCKER_ADDITIONAL_MOUNTS: mount 2 of 2: {error}" in msg, msg


def test_a_mount_error_never_repeats_a_volume_option() -> None:
    spec = "type=volume,source=s,target=/app,volume-opt=password=hunter2-very-secret,bogus=1"
    msg = problems(EXECUTOR_DOCKER_ADDITIONAL_MOUNTS=spec)
    assert "unexpected key 'bogus'" in msg and "hunter2" not in msg


@pytest.mark.parametrize(
    "spec",
    [
        "type=tmpfs,target=/y,tmpfs-size=mountsecretvalue",
        "type=tmpfs,target=/y,tmpfs-mode=mountsecretvalue",
        "type=bind,source=/x,target=/y,readonly=mountsecretvalue",
        "type=bind,source=/x,target=/y,bind-nonrecursive=mountsecretvalue",
        "type=volume,source=v,target=/y,volume-nocopy=mountsecretvalue",
    ],
)
def test_a_bad_option_value_is_never_repeated(spec: str) -> None:
    """Review of issue 11 (operator_env.py): tmpfs-size repeated its value in the error."""
    msg = problems(EXECUTOR_DOCKER_ADDITIONAL_MOUNTS=spec)
    assert "EXECUTOR_DOCKER_ADDITIONAL_MOUNTS: mount 1 of 1: invalid value for " in msg, msg
    assert "mountsecretvalue" not in msg, msg


def test_empty_mount_specs_are_skipped() -> None:
    s = settings(EXECUTOR_DOCKER_ADDITIONAL_MOUNTS="type=tmpfs,target=/a;; ;type=tmpfs,target=/b;")
    assert s.docker.additional_mounts == ["type=tmpfs,target=/a", "type=tmpfs,target=/b"]


# -- EXECUTOR_DOCKER_AUTH_CONFIG: {"auths": {...}}, each auth the base64 of user:password ---------------
def _auth(entry: object, **top: object) -> str:
    return json.dumps({"auths": {"registry.example": entry}, **top})


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.mark.parametrize(
    "entry",
    [
        {"auth": _b64("ci:s3cr:et")},  # the password may hold ":"
        {"identitytoken": "tok-abc"},
        {"username": "ci", "password": "pw"},
    ],
)
def test_a_good_auth_config_is_kept(entry: dict[str, str]) -> None:
    assert settings(EXECUTOR_DOCKER_AUTH_CONFIG=_auth(entry)).docker_auth_config == {
        "auths": {"registry.example": entry}
    }
    assert settings(EXECUTOR_DOCKER_AUTH_CONFIG='{"auths": {}}').docker_auth_config == {"auths": {}}


SECRET_AUTH = _b64("robot:hunter2-password")


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (
            _auth({"auth": "!!" + SECRET_AUTH}),
            "auths['registry.example'].auth is not base64 of user:password",
        ),
        (_auth({"auth": SECRET_AUTH.rstrip("=") + "A"}), "is not base64"),
        (
            _auth({"auth": _b64("hunter2-no-colon")}),
            "auths['registry.example'].auth does not decode to user:password",
        ),
        (_auth({"auth": _b64(":hunter2-no-user")}), "does not decode to user:password"),
        (_auth({"auth": base64.b64encode(b"\xff\xfe:hunter2").decode()}), "is not base64 of user:password"),
        (_auth({"auth": 12345}), "auth must be a string"),
        (_auth({}), "auths['registry.example'] has no credentials"),
        (_auth("hunter2"), "auths['registry.example'] must be an object"),
        (_auth({"username": ["hunter2"]}), "auths['registry.example'].username must be a string"),
        (
            _auth({"auth": SECRET_AUTH}, credsStore="desktop"),
            "credsStore: credential helpers are not supported",
        ),
        ('{"auths": []}', '"auths" must be an object'),
        ("[1, 2]", "must be a JSON object"),
        ('{"auths": {"r": {"auth": "' + SECRET_AUTH + '"}}', "not valid JSON"),
    ],
)
def test_a_bad_auth_config_stops_the_executor_and_never_shows_the_secret(value: str, error: str) -> None:
    msg = problems(EXECUTOR_DOCKER_AUTH_CONFIG=value)
    assert f"EXECUTOR_DOCKER_AUTH_CONFIG: {error}" in msg or (
        "EXECUTOR_DOCKER_AUTH_CONFIG: " in msg and error in msg
    ), msg
    assert "hunter2" not in msg and SECRET_AUTH not in msg and SECRET_AUTH[:8] not in msg
    assert len(msg.splitlines()) == 2  # the heading and one line


# -- the shared secret (corral.sharedsecret), on both sides --------------------------------------------
@pytest.mark.parametrize(
    ("secret", "why"),
    [
        ("p" * 19, "is 19 characters long; it must be at least 20 characters"),
        ("abc def ghi jkl mno pqr", "contains blanks, which can never authenticate"),
        ("abcdefghij\tklmnopqrstu", "contains blanks"),
        ("abcdefghijklmnopqrstü", "must be printable ASCII"),
        ("abcdefghij\x07klmnopqrstu", "must be printable ASCII"),
    ],
)
def test_a_secret_that_cannot_work_is_refused_on_both_sides(secret: str, why: str, tmp_path: Path) -> None:
    msg = problems(EXECUTOR_FRONTEND_PASSWORD=secret)
    assert f"EXECUTOR_FRONTEND_PASSWORD: {why}" in msg and secret not in msg, msg
    with pytest.raises(ConfigError) as info:
        ServerSettings(data_dir=tmp_path, executors_access_token=secret).check()
    assert f"EXECUTORS_ACCESS_TOKEN {why}" in info.value.message and secret not in info.value.message


def test_25_spaces_are_no_secret(tmp_path: Path) -> None:
    # the executor strips its variables: blank is unset
    assert "EXECUTOR_FRONTEND_PASSWORD: required" in problems(EXECUTOR_FRONTEND_PASSWORD=" " * 25)
    with pytest.raises(ConfigError, match="EXECUTORS_ACCESS_TOKEN contains blanks"):
        ServerSettings(data_dir=tmp_path, executors_access_token=" " * 25).check()
    with pytest.raises(ConfigError, match="EXECUTORS_ACCESS_TOKEN contains blanks"):
        ServerSettings(data_dir=tmp_path, executors_access_token=" " * 5 + "Vx3kq9Lw2RzT7mN4pB8dYc1F").check()


@pytest.mark.parametrize(
    ("secret", "warning"),
    [
        ("changeme-changeme-changeme", "looks like a placeholder (it contains 'changeme')"),
        ("MyPassword-For-Executors-2024", "looks like a placeholder (it contains 'password')"),
        ("the-executor-SECRET-9f8e7d", "looks like a placeholder (it contains 'secret')"),
        ("p" * 20, "is easy to guess (about 0 bits"),
        ("ab" * 12, "is easy to guess (about 24 bits"),
        ("aaaaaaaaaaaaaaaaaaaaaaaaaaaaab", "is easy to guess"),
    ],
)
def test_a_weak_secret_warns_on_both_sides(secret: str, warning: str, tmp_path: Path) -> None:
    s = settings(EXECUTOR_FRONTEND_PASSWORD=secret)
    assert s.frontend_password == secret  # it works, it is only weak
    assert any(w.startswith(f"EXECUTOR_FRONTEND_PASSWORD {warning}") for w in s.warnings), s.warnings
    assert all(secret not in w for w in s.warnings)
    server = ServerSettings(data_dir=tmp_path, executors_access_token=secret)
    assert any(w.startswith(f"EXECUTORS_ACCESS_TOKEN {warning}") for w in server.check())


@pytest.mark.parametrize(
    "secret",
    [
        "Vx3kq9Lw2RzT7mN4pB8dYc1F",
        "c17df8b4297da5c67d1e84806a7cdf120ee32be0f3b1b4e1a2c5d6e7f8091a2b",  # openssl rand -hex 32
        "Gw9eax6eWIT6SiqDKpUZJQcokgbmQIsP",  # secrets.token_urlsafe(24)
        "84061739528401673952",  # 20 random digits
    ],
)
def test_a_random_secret_is_accepted_without_warnings(secret: str, tmp_path: Path) -> None:
    assert settings(EXECUTOR_FRONTEND_PASSWORD=secret).warnings == []
    assert ServerSettings(data_dir=tmp_path, executors_access_token=secret).check() == []


def test_the_server_logs_its_secret_warnings_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    server = ServerSettings(data_dir=tmp_path, executors_access_token="changeme-changeme-changeme")
    with caplog.at_level("WARNING", logger="corral.server"):
        server.check()
        server.check()
    assert [r.getMessage() for r in caplog.records] == [
        "EXECUTORS_ACCESS_TOKEN looks like a placeholder (it contains 'changeme'); "
        "generate one with: openssl rand -hex 32"
    ]


# -- the host checks (corral.executor.hostcheck), shared by run and validate ----------------------------
GiB = 1024**3
HOST = HostFacts(memory=23 * GiB + 512 * 1024**2, cpus=2)


def test_job_memory_above_the_hosts_is_a_problem() -> None:
    found = limit_findings(settings(EXECUTOR_JOB_MEMORY="1T", EXECUTOR_JOB_NUM_CPUS="1"), HOST, None)
    assert found.problems == [
        "EXECUTOR_JOB_MEMORY=1T is more than this host's memory (23.5G, MemTotal): "
        "lower it, or 0 for no limit"
    ]
    assert found.warnings == []


def test_limits_the_host_cannot_give_every_job_at_once_warn() -> None:
    s = settings(EXECUTOR_JOB_MEMORY="12G", EXECUTOR_MAXIMUM_NUM_JOBS="2", EXECUTOR_JOB_NUM_CPUS="4")
    found = limit_findings(s, HOST, disk_free=30 * GiB)
    assert found.problems == []
    assert found.warnings == [
        "EXECUTOR_MAXIMUM_NUM_JOBS=2 jobs of EXECUTOR_JOB_MEMORY=12G can use more than this host's 23.5G "
        "of memory together",
        "EXECUTOR_JOB_NUM_CPUS=4 is more than this host's 2 CPUs: each job gets at most 2",
        "EXECUTOR_MAXIMUM_NUM_JOBS=2 jobs of EXECUTOR_JOB_DISK_SPACE=20G can write more than the 30G free "
        "under EXECUTOR_WORKSPACE_ROOT together",
    ]
    assert limit_findings(s, HOST, disk_free=10 * GiB).warnings[-1] == (
        "EXECUTOR_JOB_DISK_SPACE=20G is more than the 10G free under EXECUTOR_WORKSPACE_ROOT: "
        "a job may fill the host's disk before its quota stops it"
    )


def test_limits_within_the_host_or_unbounded_are_fine() -> None:
    fits = settings(EXECUTOR_JOB_MEMORY="4G", EXECUTOR_JOB_NUM_CPUS="2", EXECUTOR_JOB_DISK_SPACE="5G")
    assert limit_findings(fits, HOST, disk_free=100 * GiB) == Findings()
    unbounded = settings(EXECUTOR_JOB_MEMORY="0", EXECUTOR_JOB_NUM_CPUS="0", EXECUTOR_JOB_DISK_SPACE="0")
    assert limit_findings(unbounded, HOST, disk_free=1) == Findings()


MOUNTINFO_TEXT = """\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
23 22 0:21 / /proc rw,nosuid,nodev,noexec shared:2 - proc proc rw
24 22 0:22 / /sys rw,nosuid - sysfs sysfs rw
25 22 0:23 / /dev/shm rw - tmpfs tmpfs rw
26 22 254:16 / /srv/work\\040dir rw - xfs /dev/vdb rw
"""


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("/proc/nope", "proc"),
        ("/proc", "proc"),
        ("/sys/fs/x/y", "sysfs"),
        ("/dev/shm/ws", "tmpfs"),
        ("/srv/work dir/ws", "xfs"),  # mountinfo escapes the space
        ("/srv/work", "ext4"),
        ("/var/lib/corral/workspaces", "ext4"),
    ],
)
def test_the_filesystem_of_a_path_is_its_longest_mount_point(path: str, kind: str) -> None:
    assert mount_type(Path(path), MOUNTINFO_TEXT.splitlines()) == kind


def test_the_filesystem_of_a_path_that_does_not_exist_is_its_nearest_ancestors(tmp_path: Path) -> None:
    assert filesystem_type(Path("/proc/nope/deeper")) == "proc"
    assert filesystem_type(tmp_path / "not" / "yet") == filesystem_type(tmp_path) != ""


async def test_a_workspace_root_on_proc_stops_the_executor_in_one_line(tmp_path: Path) -> None:
    s = settings(EXECUTOR_WORKSPACE_ROOT="/proc/nope", EXECUTOR_JOB_UID_LOCK_DIR=str(tmp_path / "locks"))
    found = await check_host(s, HOST)
    assert found.problems == [
        "EXECUTOR_WORKSPACE_ROOT=/proc/nope is on a proc filesystem (the kernel's, it holds no files): "
        "use a directory on a disk"
    ]
    with pytest.raises(CorralError) as info:
        await build_worker(s)
    assert info.value.message == found.problems[0]
    assert not Path("/proc/nope").exists()


async def test_a_workspace_root_that_cannot_be_created_or_written(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    locks = str(tmp_path / "locks")
    found = await check_host(
        settings(EXECUTOR_WORKSPACE_ROOT=str(tmp_path / "file" / "ws"), EXECUTOR_JOB_UID_LOCK_DIR=locks), HOST
    )
    assert found.problems == [
        f"EXECUTOR_WORKSPACE_ROOT={tmp_path}/file/ws: cannot create it: Not a directory"
    ]
    found = await check_host(
        settings(EXECUTOR_WORKSPACE_ROOT="relative/ws", EXECUTOR_JOB_UID_LOCK_DIR=locks), HOST
    )
    assert found.problems == ["EXECUTOR_WORKSPACE_ROOT=relative/ws must be an absolute path"]


async def test_the_uid_lock_dir_and_bind_mount_sources_are_checked(tmp_path: Path) -> None:
    s = settings(
        EXECUTOR_WORKSPACE_ROOT=str(tmp_path / "ws"),
        EXECUTOR_JOB_DISK_SPACE="0",
        EXECUTOR_JOB_UID_LOCK_DIR="/proc/nope/locks",
        EXECUTOR_DOCKER_ADDITIONAL_MOUNTS=f"type=bind,source={tmp_path},target=/a;type=bind,source=/nonexistent/x,target=/b",
    )
    found = await check_host(s, HOST)
    assert found.problems == [
        "EXECUTOR_JOB_UID_LOCK_DIR=/proc/nope/locks: cannot create it: No such file or directory",
        "EXECUTOR_DOCKER_ADDITIONAL_MOUNTS: mount 2's source /nonexistent/x does not exist on this host "
        "(every job would fail to start)",
    ]
    assert (tmp_path / "ws").is_dir() and oct((tmp_path / "ws").stat().st_mode & 0o777) == "0o700"
    # the shell runtime does not use the docker mounts: not its business
    shell = settings(
        EXECUTOR_RUNTIME="shell",
        EXECUTOR_WORKSPACE_ROOT=str(tmp_path / "ws"),
        EXECUTOR_JOB_DISK_SPACE="0",
        EXECUTOR_JOB_UID_LOCK_DIR=str(tmp_path / "locks"),
        EXECUTOR_DOCKER_ADDITIONAL_MOUNTS="type=bind,source=/nonexistent/x,target=/b",
    )
    assert (await check_host(shell, HOST)).problems == []


async def test_a_workspace_root_proves_it_can_hold_loop_mounted_images(tmp_path: Path) -> None:
    require(os.geteuid() == 0 and not check_quota_support(), "root and loop devices (disk quotas)")
    s = settings(
        EXECUTOR_WORKSPACE_ROOT=str(tmp_path / "ws"), EXECUTOR_JOB_UID_LOCK_DIR=str(tmp_path / "locks")
    )
    assert (await check_host(s, HOST)).problems == []
    assert list((tmp_path / "ws").iterdir()) == []  # the probe left nothing behind
    with open("/proc/self/mounts") as f:
        assert str(tmp_path) not in f.read()


# -- validate's one request to the server ----------------------------------------------------------
def _probe(handler: Callable[[httpx.Request], httpx.Response], **env: str) -> tuple[str, str | None]:
    return asyncio.run(probe_server(settings(**env), transport=httpx.MockTransport(handler)))


def test_an_html_answer_is_not_an_executor_queue_api_and_the_page_is_not_shown() -> None:
    page = "<!doctype html><html><body>" + "Welcome to nginx! " * 200 + "</body></html>"
    _, problem = _probe(
        lambda r: httpx.Response(200, html=page), EXECUTOR_FRONTEND_URL="http://127.0.0.1:8080/sg"
    )
    assert problem == (
        "not an executor queue API "
        "(got text/html from http://127.0.0.1:8080/sg/.executors/test/auth, status 200)"
    )
    _, problem = _probe(lambda r: httpx.Response(404, html=page))
    assert (
        problem is not None and "text/html" in problem and "nginx" not in problem and "status 404" in problem
    )


def test_the_auth_check_uses_the_executor_token_and_the_path_prefix() -> None:
    seen: list[httpx.Request] = []

    def sourcegraph(r: httpx.Request) -> httpx.Response:
        seen.append(r)
        return httpx.Response(200, text="ok")

    kind, problem = _probe(sourcegraph, EXECUTOR_FRONTEND_URL="https://sg.example/prefix")
    assert problem is None and kind.startswith("a Sourcegraph frontend")
    assert [(r.method, str(r.url)) for r in seen] == [
        ("GET", "https://sg.example/prefix/.executors/test/auth")
    ]
    assert seen[0].headers["authorization"] == f"token-executor {GOOD['EXECUTOR_FRONTEND_PASSWORD']}"


def test_a_corral_server_is_told_by_its_extensions_header() -> None:
    kind, problem = _probe(
        lambda r: httpx.Response(200, text="ok", headers={"X-Corral-Extensions": "long-poll,fencing"})
    )
    assert (kind, problem) == ("a corral server (extensions: long-poll,fencing)", None)


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        (
            httpx.Response(401, text="invalid token\n"),
            "auth check failed: 401 invalid token (is EXECUTOR_FRONTEND_PASSWORD",
        ),
        (httpx.Response(500, json={"error": "boom"}), 'auth check failed: 500 {"error":"boom"} (from http'),
        (httpx.Response(200, json={"status": "up"}), "not an executor queue API (got application/json"),
        (httpx.Response(200, text="x" * 5000), "not an executor queue API (got text/plain"),
    ],
)
def test_other_answers_are_one_bounded_line(answer: httpx.Response, problem: str) -> None:
    _, got = _probe(lambda r: answer)
    assert got is not None and got.startswith(problem), got
    assert "\n" not in got and len(got) < 400


def test_git_older_than_sourcegraphs_minimum_is_a_problem() -> None:
    from corral.executor.main import _git_problem

    assert _git_problem("2.39.5") is None and _git_problem("2.26.0") is None
    assert _git_problem("2.25.1") == "git 2.25.1 is too old: 2.26 or newer is needed"
    assert _git_problem("") == "git is not installed (apt-get install git)"


async def test_build_worker_logs_the_settings_warnings(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    s = settings(
        EXECUTOR_WORKSPACE_ROOT="/proc/nope",
        EXECUTOR_JOB_UID_LOCK_DIR=str(tmp_path / "locks"),
        EXECUTOR_MAXIMUM_NUM_JOB="2",
    )
    with caplog.at_level("WARNING", logger="corral.executor"), pytest.raises(CorralError):
        await build_worker(s)
    assert "EXECUTOR_MAXIMUM_NUM_JOB is not a variable corral knows: ignored" in caplog.text


# -- `corral executor validate` and `run` as processes ---------------------------------------------
CORRAL = str(Path(sys.executable).with_name("corral"))


def _corral(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"), "CORRAL_TESTING": "1"}
    return subprocess.run([CORRAL, *args], env={**base, **env}, capture_output=True, text=True, timeout=60)


def _process_env(tmp_path: Path, url: str, **extra: str) -> dict[str, str]:
    return {
        **GOOD,
        "EXECUTOR_FRONTEND_URL": url,
        "EXECUTOR_RUNTIME": "fake",
        "EXECUTOR_JOB_NUM_CPUS": "1",
        "EXECUTOR_JOB_MEMORY": "1G",
        "EXECUTOR_JOB_DISK_SPACE": "0",
        "EXECUTOR_WORKSPACE_ROOT": str(tmp_path / "ws"),
        "EXECUTOR_JOB_UID_LOCK_DIR": str(tmp_path / "locks"),
        **extra,
    }


def test_run_with_a_workspace_root_on_proc_exits_with_one_line(tmp_path: Path) -> None:
    done = _corral(
        ["executor", "run"],
        _process_env(tmp_path, "http://127.0.0.1:9", EXECUTOR_WORKSPACE_ROOT="/proc/nope"),
    )
    assert done.returncode == 2, done
    assert done.stderr.splitlines() == [
        "error: EXECUTOR_WORKSPACE_ROOT=/proc/nope is on a proc filesystem "
        "(the kernel's, it holds no files): "
        "use a directory on a disk"
    ], done.stderr
    assert done.stdout == ""


def test_validate_names_a_bad_workspace_root_and_memory_without_a_traceback(tmp_path: Path) -> None:
    env = _process_env(
        tmp_path, "http://127.0.0.1:9", EXECUTOR_WORKSPACE_ROOT="/proc/nope", EXECUTOR_JOB_MEMORY="1T"
    )
    done = _corral(["executor", "validate"], env)
    assert done.returncode == 1, done
    out = done.stdout + done.stderr
    assert "Traceback" not in out
    assert "✗ EXECUTOR_WORKSPACE_ROOT=/proc/nope is on a proc filesystem" in done.stdout
    assert "✗ EXECUTOR_JOB_MEMORY=1T is more than this host's memory" in done.stdout
    assert "✗ server http://127.0.0.1:9: cannot reach the server" in done.stdout


@pytest.fixture
def live_server(tmp_path: Path) -> Iterator[tuple[str, ServerSettings]]:
    from corral.embedded import free_port, serve_in_thread

    server_settings = ServerSettings(
        data_dir=tmp_path / "server",
        port=free_port(),
        executors_access_token=GOOD["EXECUTOR_FRONTEND_PASSWORD"],
        admin_token="admin-" + "Q7w" * 8,
    )
    server, thread = serve_in_thread(server_settings)
    try:
        yield f"http://127.0.0.1:{server_settings.port}", server_settings
    finally:
        server.should_exit = True
        thread.join(10)


def test_validate_against_a_corral_server_prints_the_summary_and_registers_no_executor(
    tmp_path: Path, live_server: tuple[str, ServerSettings]
) -> None:
    require(os.geteuid() == 0, "root (validate checks that the executor runs as root)")
    url, server_settings = live_server
    done = _corral(["executor", "validate"], _process_env(tmp_path, url, EXECUTOR_MAXIMUM_NUM_JOBS="2"))
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    summary = {line.split()[0]: line for line in lines if line and line[0].isalpha()}
    assert summary["server"].endswith(f"{url}: a corral server (extensions: {','.join(EXTENSIONS)})")
    assert "fake" in summary["runtime"]
    assert summary["queues"].split()[-1] == "batches"
    assert "cpus 1, memory 1G, disk unbounded, processes 1024, timeout 30m0s" in done.stdout
    assert "2 at a time; stop never" in summary["jobs"]
    assert (
        f"corral {__version__}, git " in summary["versions"]
        and f"kernel {platform.release()}" in summary["versions"]
    )
    assert str(tmp_path / "ws") in summary["workspaces"]
    assert lines[-1].startswith("✓")
    # no heartbeat: the server's executor list stays empty
    r = httpx.get(
        f"{url}/api/v1/executors", headers={"Authorization": f"Bearer {server_settings.admin_token}"}
    )
    assert r.status_code == 200 and r.json() == [], r.text


def test_validate_against_a_web_page_is_one_line(tmp_path: Path) -> None:
    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = (
                b"<!doctype html><html><head><title>Welcome</title></head><body>"
                + b"x" * 4000
                + b"</body></html>"
            )
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page) as web:
        threading.Thread(target=web.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{web.server_address[1]}"
        done = _corral(["executor", "validate"], _process_env(tmp_path, url))
        web.shutdown()
    assert done.returncode == 1
    assert (
        f"✗ server {url}: not an executor queue API "
        f"(got text/html from {url}/.executors/test/auth, status 200)" in done.stdout.splitlines()
    ), done.stdout
    assert "<html" not in done.stdout + done.stderr and "Traceback" not in done.stderr
