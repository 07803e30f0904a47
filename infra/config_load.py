"""Loading the stack configuration: the config keys from the Pulumi runtime into a `StackConfig`.

`load_config` reads and validates every key before any resource is declared: a misspelled key or
a bad value stops the program with one message that names each offending key (a `ConfigError`, a
`pulumi.RunError`, which Pulumi prints without a stack trace), instead of a provider error halfway
through `up`.
"""

import difflib
import json
import typing
from typing import Any

import pulumi
from pydantic import ValidationError

from infra.config import LOCATION_KEY, RUNTIME_FIELDS, ConfigError, StackConfig


def config_keys() -> list[str]:
    """The config keys (aliases) in declaration order, without the runtime fields."""
    return [
        field.alias or name
        for name, field in StackConfig.model_fields.items()
        if name not in RUNTIME_FIELDS
    ]


def full_key(alias: str, project: str) -> str:
    return LOCATION_KEY if alias == "location" else f"{project}:{alias}"


def _parse(alias: str, raw: str) -> Any:
    """Lists and maps arrive as JSON text; a list also takes comma-separated values. Anything
    else goes to pydantic as the string it is, and pydantic reports what is wrong with it."""
    field = next(f for f in StackConfig.model_fields.values() if f.alias == alias)
    kind = typing.get_origin(field.annotation)
    if kind not in (list, dict):
        return raw
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return [item.strip() for item in raw.split(",") if item.strip()] if kind is list else raw


def _describe(error: dict[str, Any], project: str) -> str:
    loc = error["loc"]
    key = full_key(str(loc[0]), project) if loc else project
    key += "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc[1:])
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "missing":
        message = f"required; set it with `pulumi config set {key} VALUE`"
    elif error["type"] != "value_error" and "input" in error:
        message += f" (got {error['input']!r})"
    return f"  {key}: {message}"


def validate(raw: dict[str, Any], project: str, stack: str) -> StackConfig:
    """Validate raw config values keyed by alias; raise ConfigError naming every bad key."""
    try:
        return StackConfig.model_validate({**raw, "project": project, "stack": stack})
    except ValidationError as exc:
        lines = [_describe(e, project) for e in exc.errors(include_url=False)]
        raise ConfigError(
            f"invalid stack configuration (stack {stack}):\n" + "\n".join(lines)
        ) from None


def load_config() -> StackConfig:
    """Read the stack config through the Pulumi runtime and validate it."""
    project, stack = pulumi.get_project(), pulumi.get_stack()
    keys = config_keys()

    # A misspelled key would otherwise be silently ignored and its default used.
    present = {**pulumi.runtime.get_config_env(), **pulumi.runtime.config.CONFIG.get()}
    unknown = []
    for key in sorted(present):
        namespace, _, alias = key.partition(":")
        if namespace == project and alias not in keys:
            close = difflib.get_close_matches(alias, keys, n=1)
            hint = f" (did you mean {project}:{close[0]}?)" if close else ""
            unknown.append(f"  {key}: unknown key{hint}")
    if unknown:
        raise ConfigError(f"invalid stack configuration (stack {stack}):\n" + "\n".join(unknown))

    raw: dict[str, Any] = {}
    for alias in keys:
        key = full_key(alias, project)
        namespace, _, name = key.partition(":")
        value = pulumi.Config(namespace).get(name)
        if value is None or value == "":
            continue
        raw[alias] = _parse(alias, value)
    return validate(raw, project, stack)
