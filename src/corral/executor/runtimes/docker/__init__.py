"""The `docker` runtime: each step in its own container on a Docker Engine (see `runtime`).

Modules: `runtime` (the Runtime), `api` (the Engine API client), `containers` (a step's container),
`images` (image references, pulls, images pulled with job credentials), `registries` (registry
address checks), `credentials` (the job's private docker config), `watchdog` (the disk watchdog),
`settings` (EXECUTOR_DOCKER_*). Telemetry: `DockerRuntime.telemetry()`.
"""

from corral.executor.runtimes.docker.containers import LABEL_STEP
from corral.executor.runtimes.docker.credentials import auth_header_from_config, registry_auth_header
from corral.executor.runtimes.docker.images import PulledImages, parse_image_ref
from corral.executor.runtimes.docker.registries import (
    ALLOWED_REGISTRIES_SETTING,
    canonical_registry,
    check_registry_address,
    literal_address,
    refused_address,
)
from corral.executor.runtimes.docker.runtime import DockerRuntime
from corral.executor.runtimes.docker.settings import DockerSettings, parse_mount_spec

__all__ = [
    "ALLOWED_REGISTRIES_SETTING",
    "LABEL_STEP",
    "DockerRuntime",
    "DockerSettings",
    "PulledImages",
    "auth_header_from_config",
    "canonical_registry",
    "check_registry_address",
    "literal_address",
    "parse_image_ref",
    "parse_mount_spec",
    "refused_address",
    "registry_auth_header",
]
