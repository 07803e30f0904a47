"""Strings from a service (job names, tags, statuses, events, error messages) on the way to a
terminal: control characters are shown escaped, never sent raw. An escape sequence in a tag that
anyone with access to the workspace can set would otherwise clear or rewrite the user's screen."""

from __future__ import annotations


def printable(text):
    """`text` with every non-printable character escaped (`\\x1b`, `\\n`); None stays None."""
    if text is None:
        return None
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in text)
