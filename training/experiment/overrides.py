"""`--set training.learning_rate=3e-4`: a field of the experiment file changed from the command line.

A sweep trial passes the values it sampled this way. Only fields of `training` and `lora` can be
set (they are what a sweep tunes); the result is validated exactly like the file. Values are read as
numbers or YAML scalars; a whole-number float for an integer field (a `quniform` sample such as `16.0`) is
taken as that integer, any other mismatch is an error naming the field.
"""

from __future__ import annotations

import yaml

from training.experiment.config import ConfigError, ExperimentConfig, parse_config

TUNABLE_SECTIONS = ("training", "lora")


def tunable_fields() -> dict[str, type]:
    """`section.field` -> the annotation of every field a sweep or --set may change."""
    from training.experiment.config import LoraSettings, Training

    out = {}
    for section, model in (("training", Training), ("lora", LoraSettings)):
        for name, info in model.model_fields.items():
            out[f"{section}.{name}"] = info.annotation
    return out


def parse_assignment(text: str) -> tuple[str, object]:
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {text!r}: expected FIELD=VALUE, e.g. training.learning_rate=3e-4")
    return key, parse_scalar(raw, key)


def parse_scalar(raw: str, key: str = ""):
    """A number as Python reads it (`3e-4` too, which YAML 1.1 leaves a string), else YAML."""
    raw = raw.strip()
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    try:
        return yaml.safe_load(raw) if raw else None
    except yaml.YAMLError:
        raise ConfigError(f"--set {key}: cannot read the value {raw!r}") from None


def apply_overrides(cfg: ExperimentConfig, assignments: dict[str, object] | list[str],
                    source: str = "--set") -> ExperimentConfig:
    """The config with the given fields replaced, validated like the file."""
    if isinstance(assignments, list):
        assignments = dict(parse_assignment(a) for a in assignments)
    if not assignments:
        return cfg
    fields = tunable_fields()
    data = cfg.model_dump(mode="json")
    for key, value in assignments.items():
        if key not in fields:
            raise ConfigError(f"{source} {key}: not a field of training or lora (one of: "
                              f"{', '.join(sorted(fields))})")
        section, name = key.split(".", 1)
        if fields[key] in (int, int | None) and isinstance(value, float) and value.is_integer():
            value = int(value)
        data[section][name] = value
    try:
        return parse_config(data, source)
    except ConfigError as e:
        raise ConfigError(str(e).replace(f"{source}: invalid experiment file",
                                         f"{source}: invalid value")) from None
