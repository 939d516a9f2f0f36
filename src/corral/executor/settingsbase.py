"""The one settings idiom of the executor: pydantic-settings models whose field aliases are the
EXECUTOR_* variable names, validated from any mapping (tests pass plain dicts).

`from_env(model, env)` returns the model or the list of problems, one line per bad variable, each
naming it ("EXECUTOR_JOB_MEMORY: 'lots' is not a size ..."). Blank values count as unset.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Annotated, Any, TypeVar

from pydantic import BeforeValidator, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

__all__ = ["Bool", "Count", "EnvSettings", "JsonObject", "from_env", "present"]

M = TypeVar("M", bound="EnvSettings")


class EnvSettings(BaseSettings):
    """Read from the mapping given to `from_env` only (never os.environ behind the caller's back)."""

    model_config = SettingsConfigDict(populate_by_name=True, extra="ignore", validate_default=False)

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


def from_env(model: type[M], env: Mapping[str, str], **extra: Any) -> tuple[M | None, list[str]]:
    try:
        return model.model_validate({**present(env), **extra}), []
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            name = ".".join(str(p) for p in err["loc"]) or model.__name__
            msg = str(err["msg"]).removeprefix("Value error, ")
            problems.append(f"{name}: {msg}")
        return None, problems


def _bool(v: Any) -> Any:
    if not isinstance(v, str):
        return v
    # Go's strconv.ParseBool forms (1, t, true, 0, f, false), in any case, plus yes/no/on/off
    if v.lower() in ("1", "t", "true", "yes", "on"):
        return True
    if v.lower() in ("0", "f", "false", "no", "off"):
        return False
    raise ValueError(f"{v!r} is not a boolean (true/false, t/f, 1/0)")


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
