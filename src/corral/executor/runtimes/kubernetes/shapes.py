"""Checks of Kubernetes values as the API server would make them, before anything is sent to it.

- names: DNS-1123 labels (namespaces, Job names) and subdomains (Secrets, nodes, pull secrets);
- labels and annotations: qualified keys (`prefix/name`), label values;
- quantities ("500m", "12Gi", "1e3"): `parse_quantity` -> Decimal, so a request can be compared
  with its limit;
- object shapes: `check_shape(value, "V1Volume", where)` walks a JSON value against the
  kubernetes_asyncio model of that name (its `openapi_types` and `attribute_map`): unknown fields
  (a typo such as `topologykey`) and wrong types are refused, naming the path. The models do not
  check enums or required fields: callers check those themselves.

Every function raises ValueError with a message that names what is wrong and never repeats a
value that may be secret (callers pass only operator settings and names, and messages quote at
most 80 characters of a key or name).
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any

__all__ = [
    "MAX_ANNOTATIONS",
    "check_dns_label",
    "check_dns_subdomain",
    "check_label_value",
    "check_qualified_name",
    "check_shape",
    "parse_quantity",
]

MAX_ANNOTATIONS = 256 * 1024  # bytes of all annotation keys and values of one object (the API's bound)
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_NAME_PART = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_QUANTITY = re.compile(
    r"(?P<num>[+-]?(\d+(\.\d*)?|\.\d+))"
    r"(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?\d+)?"
)
_BINARY = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_MAX_DEPTH = 32  # nesting a setting's JSON may have (the deepest Volume is far shallower)
_SHOWN = 80  # characters of a key or name an error quotes


def _shown(v: str) -> str:
    return repr(v[:_SHOWN] + ("..." if len(v) > _SHOWN else ""))


def check_dns_label(v: str, what: str = "name") -> str:
    """An RFC 1123 label: at most 63 of [a-z0-9-], alphanumeric at both ends."""
    if len(v) > 63 or not _DNS_LABEL.fullmatch(v):
        raise ValueError(
            f"{what} {_shown(v)} is not a DNS-1123 label (at most 63 of a-z, 0-9 and '-', "
            "starting and ending with a letter or digit)"
        )
    return v


def check_dns_subdomain(v: str, what: str = "name") -> str:
    """An RFC 1123 subdomain: at most 253 characters, dot-separated labels."""
    if len(v) > 253 or not _DNS_SUBDOMAIN.fullmatch(v):
        raise ValueError(
            f"{what} {_shown(v)} is not a DNS-1123 subdomain (at most 253 of a-z, 0-9, '-' and '.', "
            "starting and ending with a letter or digit)"
        )
    return v


def check_qualified_name(v: str, what: str = "key") -> str:
    """A label or annotation key: [prefix/]name, prefix a DNS-1123 subdomain, name at most 63
    of [A-Za-z0-9-_.], alphanumeric at both ends."""
    prefix, slash, name = v.rpartition("/")
    if slash:
        if not prefix:
            raise ValueError(f"{what} {_shown(v)}: the prefix before '/' is empty")
        check_dns_subdomain(prefix, f"{what} prefix")
    if len(name) > 63 or not _NAME_PART.fullmatch(name):
        raise ValueError(
            f"{what} {_shown(v)} is not a qualified name ([prefix/]name, the name at most 63 of "
            "A-Z, a-z, 0-9, '-', '_' and '.', starting and ending with a letter or digit)"
        )
    return v


def check_label_value(v: str, what: str = "label value") -> str:
    """A label value: empty, or at most 63 of [A-Za-z0-9-_.], alphanumeric at both ends."""
    if v and (len(v) > 63 or not _NAME_PART.fullmatch(v)):
        raise ValueError(
            f"{what} {_shown(v)} is not a label value (at most 63 of A-Z, a-z, 0-9, '-', '_' and '.', "
            "starting and ending with a letter or digit)"
        )
    return v


def parse_quantity(v: str) -> Decimal:
    """A Kubernetes quantity ("100m", "1.5", "12Gi", "5e3") as a Decimal of base units."""
    m = _QUANTITY.fullmatch(v.strip()) if isinstance(v, str) else None
    if m is None:
        raise ValueError(
            f"{_shown(str(v))} is not a Kubernetes quantity (e.g. 500m, 2, 512Mi, 12Gi, 1G)"
        )
    try:
        number = Decimal(m["num"])
    except InvalidOperation:  # pragma: no cover - the regex admits only decimal numbers
        raise ValueError(f"{_shown(v)} is not a Kubernetes quantity") from None
    suffix = m["suffix"] or ""
    if suffix in _BINARY:
        return number * (Decimal(1024) ** _BINARY[suffix])
    if suffix in _DECIMAL:
        return number.scaleb(_DECIMAL[suffix])
    if suffix:
        return number.scaleb(int(suffix[1:]))
    return number


_SCALARS: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "datetime": (str,),
    "date": (str,),
}


def check_shape(value: Any, type_name: str, where: str, _depth: int = 0) -> None:
    """Refuse `value` unless it has the shape of the OpenAPI type `type_name` (a kubernetes_asyncio
    model name such as "V1Volume", or "str", "int", "list[...]", "dict(str, ...)", "object")."""
    here = where or "the value"
    if _depth > _MAX_DEPTH:
        raise ValueError(f"{here}: nested more than {_MAX_DEPTH} levels deep")
    if type_name == "object":
        return
    scalar = _SCALARS.get(type_name)
    if scalar is not None:
        if isinstance(value, bool) and bool not in scalar:
            raise ValueError(f"{here} must be {_article(type_name)}, not a boolean")
        if not isinstance(value, scalar):
            raise ValueError(f"{here} must be {_article(type_name)}, not {_json_type(value)}")
        return
    if type_name.startswith("list[") and type_name.endswith("]"):
        if not isinstance(value, list):
            raise ValueError(f"{here} must be a JSON list, not {_json_type(value)}")
        for i, item in enumerate(value):
            check_shape(item, type_name[5:-1], f"{where}[{i}]", _depth + 1)
        return
    if type_name.startswith("dict(") and type_name.endswith(")"):
        if not isinstance(value, dict):
            raise ValueError(f"{here} must be a JSON object, not {_json_type(value)}")
        inner = type_name[5:-1].partition(",")[2].strip()
        for k, item in value.items():
            check_shape(item, inner, f"{where}[{_shown(k)}]", _depth + 1)
        return
    # imported here, not at the top: kubernetes_asyncio costs ~0.5 s and ~25 MiB to import, and
    # ExecutorSettings imports this module for every runtime
    from kubernetes_asyncio.client import models

    model = getattr(models, type_name, None)
    if model is None:  # pragma: no cover - a type the models name but do not define
        raise ValueError(f"{here}: unknown type {type_name}")
    if not isinstance(value, dict):
        raise ValueError(f"{here} must be a JSON object ({type_name[2:]}), not {_json_type(value)}")
    fields = {json_name: attr for attr, json_name in model.attribute_map.items()}
    for key, item in value.items():
        attr = fields.get(key)
        if attr is None:
            raise ValueError(f"{here}: unknown field {_shown(key)} of {type_name[2:]}")
        if item is None:
            continue  # JSON null: the field is unset
        check_shape(item, model.openapi_types[attr], f"{where}.{key}" if where else key, _depth + 1)


def _article(type_name: str) -> str:
    return {"str": "a string", "int": "a whole number", "float": "a number", "bool": "true or false"}.get(
        type_name, f"a {type_name}"
    )


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
