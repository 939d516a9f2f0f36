"""Label and field selectors as the API server parses them (equality- and set-based labels; field
selectors of `path=value`, `path==value`, `path!=value` joined by commas), and the quantity parser
(`500m`, `1Gi`, `2`, `1e3`) the scheduler and the docker limits use."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

__all__ = ["SelectorError", "field_matcher", "label_matcher", "quantity"]

_SUFFIXES = {
    "Ki": Decimal(2**10),
    "Mi": Decimal(2**20),
    "Gi": Decimal(2**30),
    "Ti": Decimal(2**40),
    "Pi": Decimal(2**50),
    "Ei": Decimal(2**60),
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal(10**3),
    "M": Decimal(10**6),
    "G": Decimal(10**9),
    "T": Decimal(10**12),
    "P": Decimal(10**15),
    "E": Decimal(10**18),
}
_QUANTITY = re.compile(r"^([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?$")
_SET_OP = re.compile(r"^\s*(!?)([A-Za-z0-9_./-]+)\s*(?:(in|notin)\s*\(([^)]*)\))?\s*$")


class SelectorError(ValueError):
    """A selector or quantity the API server would refuse (400)."""


def quantity(text: str | int | float) -> Decimal:
    """A Kubernetes quantity as a number of base units (cores, bytes)."""
    if isinstance(text, int | float):
        return Decimal(str(text))
    m = _QUANTITY.match(text.strip())
    if not m:
        raise SelectorError(f"quantities must match the regular expression {_QUANTITY.pattern!r}: {text!r}")
    try:
        return Decimal(m.group(1)) * _SUFFIXES[m.group(2) or ""]
    except InvalidOperation as exc:
        raise SelectorError(f"invalid quantity {text!r}") from exc


def _split_terms(selector: str) -> list[str]:
    """Split on commas that are not inside parentheses."""
    terms, depth, cur = [], 0, ""
    for ch in selector:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            terms.append(cur)
            cur = ""
        else:
            cur += ch
    terms.append(cur)
    return [t.strip() for t in terms if t.strip()]


def label_matcher(selector: str | None) -> Callable[[Mapping[str, str]], bool]:
    """A predicate on an object's labels; an empty selector matches everything."""
    checks: list[Callable[[Mapping[str, str]], bool]] = []
    for term in _split_terms(selector or ""):
        for op in ("!=", "==", "="):
            if op in term and "(" not in term:
                key, _, value = (p.strip() for p in term.partition(op))
                if not key:
                    raise SelectorError(f"invalid label selector term {term!r}")
                if op == "!=":
                    checks.append(lambda labels, k=key, v=value: labels.get(k) != v)
                else:
                    checks.append(lambda labels, k=key, v=value: labels.get(k) == v)
                break
        else:
            m = _SET_OP.match(term)
            if not m:
                raise SelectorError(f"invalid label selector term {term!r}")
            neg, key, op, values = m.groups()
            if op is None:
                checks.append(
                    (lambda labels, k=key: k not in labels) if neg else (lambda labels, k=key: k in labels)
                )
            elif neg:
                raise SelectorError(f"invalid label selector term {term!r}")
            else:
                vals = {v.strip() for v in values.split(",") if v.strip()}
                if op == "in":
                    checks.append(lambda labels, k=key, vs=vals: labels.get(k) in vs)
                else:
                    checks.append(lambda labels, k=key, vs=vals: labels.get(k) not in vs)
    return lambda labels: all(check(labels) for check in checks)


def _field(obj: Mapping[str, Any], path: str) -> str:
    cur: Any = obj
    for part in path.split("."):
        if not isinstance(cur, Mapping):
            return ""
        cur = cur.get(part)
    if cur is None:
        return ""
    if isinstance(cur, bool):
        return "true" if cur else "false"
    return str(cur)


def field_matcher(selector: str | None) -> Callable[[Mapping[str, Any]], bool]:
    """A predicate on a whole object: `involvedObject.name=x,type!=Normal`. Any field path is accepted
    (a real API server accepts only the fields indexed for the kind: metadata.name, metadata.namespace,
    and per kind e.g. spec.nodeName/status.phase for pods, involvedObject.* /reason/type for events)."""
    checks: list[Callable[[Mapping[str, Any]], bool]] = []
    for term in _split_terms(selector or ""):
        for op in ("!=", "==", "="):
            if op in term:
                path, _, value = (p.strip() for p in term.partition(op))
                if not path:
                    raise SelectorError(f"invalid field selector term {term!r}")
                if op == "!=":
                    checks.append(lambda obj, p=path, v=value: _field(obj, p) != v)
                else:
                    checks.append(lambda obj, p=path, v=value: _field(obj, p) == v)
                break
        else:
            raise SelectorError(f"invalid field selector term {term!r}: field selectors need =, == or !=")
    return lambda obj: all(check(obj) for check in checks)
