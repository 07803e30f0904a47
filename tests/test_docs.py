"""The docs name only commands and options that exist."""

import re
from pathlib import Path

import pytest

from training.cli import main

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")),
        *sorted((REPO / "experiments").glob("*.yaml"))]


def code_of(doc: Path) -> list[str]:
    """The command-line text of a doc: fenced blocks and `inline code` of markdown, the commented
    launch lines of an experiment file."""
    text = doc.read_text()
    if doc.suffix == ".yaml":
        return [line.lstrip("# ") for line in text.splitlines() if re.match(r"^#\s+train ", line)]
    blocks = re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S)
    inline = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    return [line for block in blocks for line in block.splitlines()] + inline


def mentioned_commands(lines):
    """(command, subcommand, the rest of the line) for each `train ...` in code."""
    for line in lines:
        for m in re.finditer(r"(?:^|[\s(/])train ([a-z][a-z-]*)(?: ([a-z][a-z-]*))?([^|#]*)", line):
            yield m.group(1), m.group(2), m.group(3)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_train_command_in_the_docs_exists(doc):
    import click

    for name, sub, rest in mentioned_commands(code_of(doc)):
        assert name in main.commands, f"{doc.name}: `train {name}` is not a command"
        command = main.commands[name]
        if isinstance(command, click.Group):
            assert sub in command.commands, f"{doc.name}: `train {name} {sub}` is not a command"
            command = command.commands[sub]
        known = {opt for p in command.params for opt in getattr(p, "opts", [])}
        for option in re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", rest):
            assert option in known | {"--help"}, (
                f"{doc.name}: `train {name}` has no option {option}")
