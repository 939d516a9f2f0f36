"""The one settings idiom of the executor: pydantic-settings models whose field aliases are the
EXECUTOR_* variable names, validated from any mapping (tests pass plain dicts).

`from_env(model, env)` returns the model or the list of problems, one line per bad variable, each
naming it ("EXECUTOR_JOB_MEMORY: 'lots' is not a size ..."). Blank values count as unset.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, TypeVar

from pydantic import AliasChoices, BaseModel, BeforeValidator, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

__all__ = [
    "GO_FALSE",
    "GO_TRUE",
    "Bool",
    "Count",
    "EnvSettings",
    "JsonObject",
    "env_names",
    "from_env",
    "padded_booleans",
    "parse_bool",
    "present",
]

M = TypeVar("M", bound="EnvSettings")


class EnvSettings(BaseSettings):
    """Read from the mapping given to `from_env` only (never os.environ behind the caller's back)."""

    model_config = SettingsConfigDict(
        populate_by_name=True, extra="ignore", validate_default=False, case_sensitive=True
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def present(env: Mapping[str, str]) -> dict[str, str]:
    """The variables that are set to something (stripped)."""
    return {k: v.strip() for k, v in env.items() if isinstance(v, str) and v.strip()}


def env_names(model: type[BaseModel]) -> set[str]:
    """The variables `model`'s fields read: their aliases (AliasChoices: every choice)."""
    names: set[str] = set()
    for info in model.model_fields.values():
        names.update(_alias_names(info.validation_alias))
    return names


def _alias_names(alias: Any) -> list[str]:
    """The variable names of a field's validation alias (a name, or every choice of AliasChoices)."""
    if isinstance(alias, str):
        return [alias]
    if isinstance(alias, AliasChoices):
        return [c for c in alias.choices if isinstance(c, str)]
    return []


def from_env(model: type[M], env: Mapping[str, str], **extra: Any) -> tuple[M | None, list[str]]:
    """`model` from the variables its fields read (others are ignored, whatever their case: SHELL
    is not the `shell` field, NAME not `name`) plus `extra`, given by field name."""
    names = env_names(model)
    given = {k: v for k, v in present(env).items() if k in names}
    try:
        return model.model_validate({**given, **extra}), []
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            name = ".".join(str(p) for p in err["loc"]) or model.__name__
            msg = str(err["msg"]).removeprefix("Value error, ")
            problems.append(f"{name}: {msg}")
        return None, problems


# Go's strconv.ParseBool, exactly: Sourcegraph's env.BaseConfig.GetBool passes the raw value to it
# without changing its case (internal/env/baseconfig.go), so "tRuE", "yes" and "on" are errors there.
GO_TRUE = ("1", "t", "T", "TRUE", "true", "True")
GO_FALSE = ("0", "f", "F", "FALSE", "false", "False")


def parse_bool(v: str) -> bool:
    """A boolean as Go's strconv.ParseBool reads it; ValueError for anything else."""
    if v in GO_TRUE:
        return True
    if v in GO_FALSE:
        return False
    raise ValueError(f"{v!r} is not a boolean (Go's forms: {', '.join(GO_TRUE + GO_FALSE)})")


def padded_booleans(
    env: Mapping[str, str], models: Iterable[type[BaseModel]], extra: Iterable[str] = ()
) -> list[str]:
    """Problems of boolean variables (the bool fields of `models`, plus `extra`) whose value has
    blanks around it: `present` strips every value, but Go's strconv.ParseBool, which Sourcegraph
    hands the raw value, refuses " true". `env` is the environment as given, before `present`."""
    names = set(extra)
    for model in models:
        for info in model.model_fields.values():
            if info.annotation is bool:
                names.update(_alias_names(info.validation_alias))
    problems = []
    for name in sorted(names):
        value = env.get(name)
        if isinstance(value, str) and value.strip() and value != value.strip():
            try:
                parse_bool(value)
            except ValueError as exc:
                problems.append(f"{name}: {exc}")
    return problems


def _bool(v: Any) -> Any:
    return parse_bool(v) if isinstance(v, str) else v


def _count(v: Any) -> Any:
    if not isinstance(v, str):
        return v
    try:
        n = int(v)
    except ValueError:
        raise ValueError(f"{v!r} is not a whole number") from None
    if n < 0:
        raise ValueError(f"{v!r} must not be negative")
    return n


def _json(v: Any) -> Any:
    if not isinstance(v, str):
        return v
    try:
        return json.loads(v)
    except ValueError as exc:
        raise ValueError(f"not valid JSON: {exc}") from None


Bool = Annotated[bool, BeforeValidator(_bool)]
Count = Annotated[int, BeforeValidator(_count)]  # a whole number >= 0
JsonObject = Annotated[Any, BeforeValidator(_json)]
