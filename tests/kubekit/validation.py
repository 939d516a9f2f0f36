"""The API server's validation and defaulting of the kinds the stand-in serves (a subset of the real
rules: the ones a wrong manifest of the runtime would trip on a real cluster). Invalid objects are
refused with 422 `Invalid` and the field path, as kube-apiserver does."""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from typing import Any

from tests.kubekit.selectors import SelectorError, quantity

__all__ = [
    "SECRET_MAX_BYTES",
    "Invalid",
    "default_job",
    "default_pod_spec",
    "validate",
]

SECRET_MAX_BYTES = 1024 * 1024  # corev1.MaxSecretSize: the sum of a Secret's data values
NAME_MAX = 253
JOB_NAME_MAX = 63  # the job-name label carries it
_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
RESTART_POLICIES = ("Always", "OnFailure", "Never")
_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # k8s' utilrand alphabet (no vowels, no confusables)


class Invalid(ValueError):
    """One failed rule: the field path and what is wrong with it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def random_suffix(n: int = 5) -> str:
    return "".join(secrets.choice(_SUFFIX_ALPHABET) for _ in range(n))


def _check_labels(labels: Any, field: str) -> None:
    if labels is None:
        return
    if not isinstance(labels, dict):
        raise Invalid(field, "must be a map of strings")
    for key, value in labels.items():
        name = key.rsplit("/", 1)[-1]
        prefix = key[: -len(name) - 1] if "/" in key else ""
        if (
            not name
            or len(name) > 63
            or not _LABEL_NAME.match(name)
            or (prefix and not _SUBDOMAIN.match(prefix))
        ):
            raise Invalid(f"{field}", f"Invalid value: {key!r}: a valid label key must be a qualified name")
        if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
            raise Invalid(
                f"{field}",
                f"Invalid value: {value!r}: a valid label must be 63 characters or less, "
                "beginning and ending with an alphanumeric character ([a-z0-9A-Z]) with dashes (-), "
                "underscores (_), dots (.), and alphanumerics between",
            )


def _check_metadata(meta: dict[str, Any], kind: str) -> None:
    name = meta.get("name", "")
    if not name:
        raise Invalid("metadata.name", "Required value: name or generateName is required")
    limit = JOB_NAME_MAX if kind == "Job" else NAME_MAX
    if len(name) > limit or not _SUBDOMAIN.match(name):
        raise Invalid(
            "metadata.name",
            f"Invalid value: {name!r}: must be no more than {limit} characters and "
            "a lowercase RFC 1123 subdomain",
        )
    _check_labels(meta.get("labels"), "metadata.labels")
    annotations = meta.get("annotations")
    if annotations is not None and (
        not isinstance(annotations, dict) or not all(isinstance(v, str) for v in annotations.values())
    ):
        raise Invalid("metadata.annotations", "must be a map of strings")


def _check_resources(resources: dict[str, Any], field: str) -> None:
    """Quantities must parse, and a request may not exceed its limit."""
    parsed: dict[str, dict[str, Any]] = {}
    for group in ("requests", "limits"):
        for name, value in (resources.get(group) or {}).items():
            try:
                parsed.setdefault(group, {})[name] = quantity(value)
            except SelectorError as exc:
                raise Invalid(f"{field}.{group}[{name}]", f"Invalid value: {value!r}: {exc}") from exc
    for name, request in (parsed.get("requests") or {}).items():
        limit = (parsed.get("limits") or {}).get(name)
        if limit is not None and request > limit:
            raise Invalid(
                f"{field}.requests",
                f"Invalid value: {resources['requests'][name]!r}: must be less than or "
                f"equal to {name} limit of {resources['limits'][name]}",
            )


def _check_pod_spec(spec: Any, field: str, *, job: bool) -> None:
    if not isinstance(spec, dict):
        raise Invalid(field, "Required value")
    containers = spec.get("containers")
    if not isinstance(containers, list) or not containers:
        raise Invalid(f"{field}.containers", "Required value")
    volumes = spec.get("volumes") or []
    volume_names = set()
    for i, vol in enumerate(volumes):
        vname = vol.get("name", "")
        if not _DNS_LABEL.match(vname) or vname in volume_names:
            raise Invalid(
                f"{field}.volumes[{i}].name", f"Invalid value: {vname!r} (missing, invalid or duplicate)"
            )
        volume_names.add(vname)
    seen: set[str] = set()
    for group in ("initContainers", "containers"):
        for i, c in enumerate(spec.get(group) or []):
            at = f"{field}.{group}[{i}]"
            cname = c.get("name", "")
            if not cname or len(cname) > 63 or not _DNS_LABEL.match(cname):
                raise Invalid(
                    f"{at}.name",
                    f"Invalid value: {cname!r}: a lowercase RFC 1123 label must consist "
                    "of lower case alphanumeric characters or '-'",
                )
            if cname in seen:
                raise Invalid(f"{at}.name", f"Duplicate value: {cname!r}")
            seen.add(cname)
            if not c.get("image"):
                raise Invalid(f"{at}.image", "Required value")
            _check_resources(c.get("resources") or {}, f"{at}.resources")
            for j, env in enumerate(c.get("env") or []):
                if not _ENV_NAME.match(env.get("name", "")):
                    raise Invalid(
                        f"{at}.env[{j}].name",
                        f"Invalid value: {env.get('name')!r}: a valid environment "
                        "variable name must consist of alphabetic characters, digits, '_', '-', or '.'",
                    )
                if "value" in env and "valueFrom" in env:
                    raise Invalid(
                        f"{at}.env[{j}].valueFrom",
                        "Invalid value: may not be specified when `value` is not empty",
                    )
            paths: set[str] = set()
            for j, mount in enumerate(c.get("volumeMounts") or []):
                if mount.get("name") not in volume_names:
                    raise Invalid(f"{at}.volumeMounts[{j}].name", f"Not found: {mount.get('name')!r}")
                mpath = mount.get("mountPath", "")
                if not mpath.startswith("/") or mpath in paths:
                    raise Invalid(
                        f"{at}.volumeMounts[{j}].mountPath",
                        f"Invalid value: {mpath!r} (must be absolute and unique)",
                    )
                paths.add(mpath)
                sub = mount.get("subPath", "")
                if sub and (sub.startswith("/") or ".." in sub.split("/")):
                    raise Invalid(
                        f"{at}.volumeMounts[{j}].subPath",
                        f"Invalid value: {sub!r}: must be a relative path without '..'",
                    )
    policy = spec.get("restartPolicy", "Always")
    if policy not in RESTART_POLICIES:
        raise Invalid(f"{field}.restartPolicy", f"Unsupported value: {policy!r}")
    if job and policy not in ("OnFailure", "Never"):
        raise Invalid(f"{field}.restartPolicy", 'Required value: valid values: "OnFailure", "Never"')


def default_pod_spec(spec: dict[str, Any]) -> None:
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("securityContext", {})
    for group in ("initContainers", "containers"):
        for c in spec.get(group) or []:
            image = c.get("image", "")
            latest = ":" not in image.rsplit("/", 1)[-1] or image.endswith(":latest")
            c.setdefault("imagePullPolicy", "Always" if latest and "@" not in image else "IfNotPresent")
            c.setdefault("terminationMessagePath", "/dev/termination-log")
            c.setdefault("terminationMessagePolicy", "File")
            c.setdefault("resources", {})


def default_job(job: dict[str, Any]) -> None:
    """The Job's defaults and the selector/labels the API server adds (controller-uid, job-name)."""
    meta = job["metadata"]
    spec = job.setdefault("spec", {})
    spec.setdefault("backoffLimit", 6)
    spec.setdefault("completions", 1)
    spec.setdefault("parallelism", 1)
    spec.setdefault("suspend", False)
    spec.setdefault("completionMode", "NonIndexed")
    uid_labels = {
        "batch.kubernetes.io/controller-uid": meta["uid"],
        "batch.kubernetes.io/job-name": meta["name"],
        "controller-uid": meta["uid"],
        "job-name": meta["name"],
    }
    spec.setdefault("selector", {"matchLabels": {"batch.kubernetes.io/controller-uid": meta["uid"]}})
    template = spec.setdefault("template", {})
    tmeta = template.setdefault("metadata", {})
    tmeta["labels"] = {**(tmeta.get("labels") or {}), **uid_labels}
    default_pod_spec(template.setdefault("spec", {}))
    job.setdefault("status", {})


def _normalise_secret(secret: dict[str, Any]) -> None:
    data = dict(secret.get("data") or {})
    for key, value in (secret.pop("stringData", None) or {}).items():
        data[key] = base64.b64encode(str(value).encode()).decode()
    total = 0
    for key, value in data.items():
        if not _SECRET_KEY.match(key) or key in (".", ".."):
            raise Invalid(
                f"data[{key}]",
                "Invalid value: a valid config key must consist of alphanumeric characters, '-', '_' or '.'",
            )
        try:
            total += len(base64.b64decode(value, validate=True))
        except (binascii.Error, TypeError) as exc:
            raise Invalid(f"data[{key}]", "Invalid value: illegal base64 data") from exc
    if total > SECRET_MAX_BYTES:
        raise Invalid("data", f"Too long: must have at most {SECRET_MAX_BYTES} bytes")
    secret["data"] = data
    secret.setdefault("type", "Opaque")


def validate(kind: str, obj: dict[str, Any]) -> None:
    """Validate (and normalise: Secret stringData -> data) an object about to be created."""
    _check_metadata(obj.setdefault("metadata", {}), kind)
    if kind == "Pod":
        _check_pod_spec(obj.get("spec"), "spec", job=False)
        default_pod_spec(obj["spec"])
    elif kind == "Job":
        template = (obj.get("spec") or {}).get("template") or {}
        _check_labels((template.get("metadata") or {}).get("labels"), "spec.template.metadata.labels")
        _check_pod_spec(template.get("spec"), "spec.template.spec", job=True)
        deadline = (obj.get("spec") or {}).get("activeDeadlineSeconds")
        if deadline is not None and (not isinstance(deadline, int) or deadline <= 0):
            raise Invalid(
                "spec.activeDeadlineSeconds", f"Invalid value: {deadline!r}: must be greater than 0"
            )
    elif kind == "Secret":
        _normalise_secret(obj)
    elif kind == "PersistentVolumeClaim":
        spec = obj.get("spec") or {}
        if not spec.get("accessModes"):
            raise Invalid("spec.accessModes", "Required value: at least 1 access mode is required")
        if not ((spec.get("resources") or {}).get("requests") or {}).get("storage"):
            raise Invalid("spec.resources[storage]", "Required value")
