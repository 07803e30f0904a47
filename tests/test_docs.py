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


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


MARKDOWN = [doc for doc in DOCS if doc.suffix == ".md"]


@pytest.mark.parametrize("doc", MARKDOWN, ids=lambda p: p.name)
def test_every_link_in_the_docs_resolves(doc):
    """Relative links name a file that exists and, with #anchor, a heading of it."""
    text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        linked = (doc.parent / path).resolve() if path else doc
        assert linked.exists(), f"{doc.name}: link to {target}: no such file"
        if anchor and linked.suffix == ".md":
            headings = re.findall(r"^#+ (.+)$", re.sub(r"```.*?```", "", linked.read_text(),
                                                      flags=re.S), flags=re.M)
            assert anchor in {slug(h) for h in headings}, f"{doc.name}: no heading #{anchor}"


def test_readme_is_a_first_page():
    """The README stays short: the details are docs/ pages, and it links every one of them."""
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    for page in sorted((REPO / "docs").glob("*.md")):
        assert f"(docs/{page.name})" in readme, f"README does not link docs/{page.name}"
