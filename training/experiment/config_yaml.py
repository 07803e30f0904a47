"""Reading an experiment file strictly, and wording its validation errors: a regular UTF-8 file of at most 1 MiB, one YAML document,
no key given twice, YAML 1.2 numbers, and the line of every key so that `training.config` can put
line numbers on its errors. Every problem is a `ConfigError` naming the file and line;
`format_errors` turns pydantic's errors into one line per field, in words, with its line.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from training.errors import BadInput


class ConfigError(BadInput):
    """A bad experiment file; the message names the file and every bad field."""


MAX_CONFIG_BYTES = 1 << 20


def read_yaml(path: Path) -> tuple[object, dict[tuple, int]]:
    """The YAML document in `path` and the line of every key (by its path of keys), read strictly:
    a key given twice is an error naming both lines; the file must be a regular UTF-8 file (a FIFO
    or a directory is refused before it is opened, never a hang); `2e-4` is a number as in YAML 1.2
    (PyYAML alone reads it as the string "2e-4")."""
    from training.experiment.paths import file_problem

    problem = file_problem(path)
    if problem:
        raise ConfigError(f"{path}: cannot read experiment file: {problem}")
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as e:
        raise ConfigError(f"{path}: cannot read experiment file: {e.strerror or e}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: over {MAX_CONFIG_BYTES >> 20} MiB: not an experiment file")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[e.start]:02x}): save the "
                          "experiment file as UTF-8") from None
    if bad := yaml.reader.Reader.NON_PRINTABLE.search(text):  # PyYAML's own rule, as a message
        line = text.count("\n", 0, bad.start()) + 1
        raise ConfigError(f"{path}:{line}: not valid YAML (control character "
                          f"U+{ord(bad.group()):04X}; only tabs, newlines and printable "
                          "characters may appear)")
    loader = _StrictLoader(text)
    try:
        node = loader.get_single_node()
        lines: dict[tuple, int] = {}
        if node is not None:
            _key_lines(node, (), lines)
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(e, "problem", None) or str(e)
        if isinstance(e, _DuplicateKey):
            raise ConfigError(f"{where}: {problem}") from None
        raise ConfigError(f"{where}: not valid YAML ({problem})") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid YAML (nested too deeply)") from None
    finally:
        loader.dispose()
    return data, lines


class _DuplicateKey(yaml.constructor.ConstructorError):
    pass


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys and reads numbers as YAML 1.2 does: `2e-4` is a
    float, `010` is 10, and `1:30` or `1_000` are strings (YAML 1.1 made them 90 and 1000)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node)  # by node: a flow mapping is one line
                except TypeError:
                    continue  # an unhashable key: SafeLoader reports it
                if first is not key_node:
                    raise _DuplicateKey(
                        None, None, f"key {key!r} given twice (first on line "
                                    f"{first.start_mark.line + 1})", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node):
        value = self.construct_scalar(node)
        if value.startswith(("0o", "0x")):
            return int(value[2:], 8 if value[1] == "o" else 16)
        return int(value, 10)


# YAML 1.2 core schema numbers in place of YAML 1.1's (booleans and null are left as they were)
_StrictLoader.yaml_implicit_resolvers = {
    k: [(tag, regexp) for tag, regexp in v
        if tag not in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"),
    list("-+0123456789"))
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
               r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."))
_StrictLoader.add_constructor("tag:yaml.org,2002:int", _StrictLoader.construct_yaml_int)


def _key_lines(node, path: tuple, lines: dict) -> None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                key = (*path, key_node.value)
                lines.setdefault(key, key_node.start_mark.line + 1)
                _key_lines(value_node, key, lines)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines.setdefault((*path, i), item.start_mark.line + 1)
            _key_lines(item, (*path, i), lines)
    if len(lines) > 10_000:  # aliases can make a small file a huge tree: enough lines known
        raise RecursionError


_TYPE_ERRORS = ("int_type", "float_type", "bool_type", "string_type", "list_type", "dict_type",
                "model_type", "literal_error", "int_from_float", "is_instance_of")


def format_errors(error, source: str, lines: dict | None = None) -> str:
    out = [f"{source}: invalid experiment file"]
    for e in error.errors():
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and "[" in p))  # union arms
        field = ".".join(str(p) for p in loc) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field"
        elif e["type"] == "missing":
            msg = "required field missing"
        elif e["type"] in _TYPE_ERRORS or e["type"].endswith("_type"):
            msg += f", got {_yaml_repr(e.get('input'))}"
        elif e["type"] == "string_pattern_mismatch":  # words, not the regex
            msg = (f"expected {_PATTERN_MEANING.get(str(loc[-1]), 'another spelling')}, got "
                   f"{_yaml_repr(e.get('input'))}")
        line = line_of(lines or {}, loc)
        out.append(f"  {field}: {msg}" + (f" (line {line})" if line else ""))
    return "\n".join(out)


_PATTERN_MEANING = {
    "name": "1-64 letters, digits, '_', '.', '-', starting with a letter or digit",
    "compute": "gpu, cpu or a cluster name (2-32 letters, digits, '-', starting with a letter)",
    "shm_size": "a size such as 16g (a number and b, k, m or g)",
    "environment": "name:version of an Azure ML environment, e.g. paired-finetune-train:3",
    "experiment_name": "letters, digits, '_', '.', '-', starting with a letter or digit",
    "vm_size": "an Azure VM size such as Standard_NC24ads_A100_v4",
}


def _yaml_repr(value) -> str:
    if isinstance(value, bool) or value is None:
        return {True: "true (a boolean)", False: "false (a boolean)", None: "null"}[value]
    if isinstance(value, str):
        return f"{value!r} (a string)"
    if isinstance(value, float):
        return f"{value!r} (a float)"
    if isinstance(value, int):
        return f"{value!r} (an integer)"
    return type(value).__name__


def line_of(lines: dict, loc: tuple) -> int | None:
    while loc:
        if loc in lines:
            return lines[loc]
        loc = loc[:-1]
    return None
