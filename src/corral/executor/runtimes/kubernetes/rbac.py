"""The Role the kubernetes runtime ships (`role.yaml`, package data) and the check of one API call
against it, as Kubernetes' RBAC authorizer makes it (a rule allows a call when its apiGroups,
resources and verbs each contain the call's, or "*"; a subresource is named "resource/subresource",
and "pods" does not allow "pods/log").

`allows(verb, group, resource, subresource)` is what the tests' stand-in API server asks for every
call the executor makes; anything it refuses answers 403 and fails the test.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import yaml

__all__ = ["ROLE_FILE", "VERBS", "Rule", "allows", "load_role", "role_manifest"]

ROLE_FILE = "role.yaml"
VERBS = ("get", "list", "watch", "create", "update", "patch", "delete", "deletecollection")


@dataclass(frozen=True)
class Rule:
    api_groups: tuple[str, ...]
    resources: tuple[str, ...]
    verbs: tuple[str, ...]
    resource_names: tuple[str, ...] = ()  # empty: every object

    def allows(self, verb: str, group: str, resource: str, subresource: str = "", name: str = "") -> bool:
        target = f"{resource}/{subresource}" if subresource else resource
        return (
            _has(self.verbs, verb)
            and _has(self.api_groups, group)
            and (_has(self.resources, target) or (bool(subresource) and f"*/{subresource}" in self.resources))
            and (not self.resource_names or name in self.resource_names)
        )


def _has(values: tuple[str, ...], value: str) -> bool:
    return "*" in values or value in values


@cache
def role_manifest() -> dict[str, Any]:
    """role.yaml as a dict (the Role an operator applies)."""
    text = resources.files(__package__).joinpath(ROLE_FILE).read_text(encoding="utf-8")
    manifest = yaml.safe_load(text)
    if not isinstance(manifest, dict) or manifest.get("kind") != "Role":
        raise ValueError(f"{ROLE_FILE} is not a Role")
    return manifest


@cache
def _rules() -> tuple[Rule, ...]:
    out = []
    for i, raw in enumerate(role_manifest().get("rules") or []):
        rule = Rule(
            api_groups=tuple(raw.get("apiGroups") or ()),
            resources=tuple(raw.get("resources") or ()),
            verbs=tuple(raw.get("verbs") or ()),
            resource_names=tuple(raw.get("resourceNames") or ()),
        )
        unknown = [v for v in rule.verbs if v not in VERBS and v != "*"]
        if unknown or not (rule.api_groups and rule.resources and rule.verbs):
            raise ValueError(f"{ROLE_FILE}: rule {i} is incomplete or names unknown verbs {unknown}")
        out.append(rule)
    return tuple(out)


def load_role() -> list[Rule]:
    """The shipped Role's rules."""
    return list(_rules())


def allows(verb: str, group: str, resource: str, subresource: str = "", name: str = "") -> bool:
    """Whether the shipped Role allows the call: `group` "" is the core API ("v1"), "batch" for
    Jobs; e.g. allows("get", "", "pods", "log") for GET .../pods/<name>/log."""
    return any(rule.allows(verb, group, resource, subresource, name) for rule in _rules())
