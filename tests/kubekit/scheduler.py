"""The scheduler's filters for the stand-in's one node (pure functions): resource requests (a pod's
effective request is max(largest init container, sum of containers); a container without requests
uses its limits, as the API server defaults them) against the node's allocatable minus the pods bound
to it, the pod count, nodeSelector, required node affinity (matchExpressions on labels, matchFields on
metadata.name; In, NotIn, Exists, DoesNotExist, Gt, Lt) and NoSchedule/NoExecute taints against
tolerations. The message is kube-scheduler's: "0/1 nodes are available: 1 Insufficient memory."
Pod (anti-)affinity is recorded in the pod spec only: with one node there is nothing to spread."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from tests.kubekit.selectors import quantity

__all__ = ["Node", "fit_message", "pod_requests", "unfit_reasons"]


@dataclass(frozen=True)
class Node:
    name: str = "kubekit-node"
    cpu: str = "4"  # allocatable cores
    memory: str = "8Gi"  # allocatable bytes
    pods: int = 110
    labels: Mapping[str, str] = field(default_factory=dict)
    taints: Sequence[Mapping[str, str]] = ()  # {"key", "value", "effect"}

    def all_labels(self) -> dict[str, str]:
        return {
            "kubernetes.io/hostname": self.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            **self.labels,
        }


def _container_requests(c: Mapping[str, Any]) -> tuple[Decimal, Decimal]:
    res = c.get("resources") or {}
    req, lim = res.get("requests") or {}, res.get("limits") or {}
    cpu = req.get("cpu", lim.get("cpu", 0))
    mem = req.get("memory", lim.get("memory", 0))
    return quantity(cpu), quantity(mem)


def pod_requests(spec: Mapping[str, Any]) -> tuple[Decimal, Decimal]:
    main = [_container_requests(c) for c in spec.get("containers") or []]
    init = [_container_requests(c) for c in spec.get("initContainers") or []]
    cpu = max(sum((r[0] for r in main), Decimal(0)), max((r[0] for r in init), default=Decimal(0)))
    mem = max(sum((r[1] for r in main), Decimal(0)), max((r[1] for r in init), default=Decimal(0)))
    return cpu, mem


def _expression_ok(expr: Mapping[str, Any], values: Mapping[str, str]) -> bool:
    key, op, wanted = expr.get("key", ""), expr.get("operator", ""), list(expr.get("values") or [])
    have = values.get(key)
    if op == "In":
        return have is not None and have in wanted
    if op == "NotIn":
        return have is None or have not in wanted
    if op == "Exists":
        return have is not None
    if op == "DoesNotExist":
        return have is None
    if op in ("Gt", "Lt") and have is not None and len(wanted) == 1:
        try:
            a, b = int(have), int(wanted[0])
        except ValueError:
            return False
        return a > b if op == "Gt" else a < b
    return False


def _affinity_ok(spec: Mapping[str, Any], node: Node) -> bool:
    labels = node.all_labels()
    for key, value in (spec.get("nodeSelector") or {}).items():
        if labels.get(key) != value:
            return False
    required = ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    )
    if not required:
        return True
    terms = required.get("nodeSelectorTerms") or []
    fields = {"metadata.name": node.name}
    return any(
        all(_expression_ok(e, labels) for e in term.get("matchExpressions") or [])
        and all(_expression_ok(e, fields) for e in term.get("matchFields") or [])
        and (term.get("matchExpressions") or term.get("matchFields"))
        for term in terms
    )


def _tolerates(tolerations: Iterable[Mapping[str, Any]], taint: Mapping[str, str]) -> bool:
    for t in tolerations:
        if t.get("effect") and t.get("effect") != taint.get("effect"):
            continue
        op = t.get("operator") or "Equal"
        if op == "Exists" and (not t.get("key") or t.get("key") == taint.get("key")):
            return True
        if (
            op == "Equal"
            and t.get("key") == taint.get("key")
            and (t.get("value") or "") == (taint.get("value") or "")
        ):
            return True
    return False


def unfit_reasons(
    node: Node, spec: Mapping[str, Any], used_cpu: Decimal, used_memory: Decimal, used_pods: int
) -> list[str]:
    """Why the pod does not fit on the node (empty: it fits)."""
    reasons = []
    if not _affinity_ok(spec, node):
        reasons.append("node(s) didn't match Pod's node affinity/selector")
    for taint in node.taints:
        if taint.get("effect") in ("NoSchedule", "NoExecute") and not _tolerates(
            spec.get("tolerations") or [], taint
        ):
            reasons.append(f"node(s) had untolerated taint {{{taint.get('key')}: {taint.get('value', '')}}}")
            break
    cpu, mem = pod_requests(spec)
    if used_pods + 1 > node.pods:
        reasons.append("Too many pods")
    if cpu and used_cpu + cpu > quantity(node.cpu):
        reasons.append("Insufficient cpu")
    if mem and used_memory + mem > quantity(node.memory):
        reasons.append("Insufficient memory")
    return reasons


def fit_message(reasons: Sequence[str], nodes: int = 1) -> str:
    parts = ", ".join(f"1 {r}" for r in sorted(reasons))
    return f"0/{nodes} nodes are available: {parts}."
