"""Service strings on the way to a terminal."""

import pytest

from training.terminal import printable


@pytest.mark.parametrize("raw, shown", [
    ("plain text, ünïcödé, 日本語", "plain text, ünïcödé, 日本語"),
    ("a\x1b[31mred", "a\\x1b[31mred"),
    ("two\nlines\ttab\r", "two\\nlines\\ttab\\r"),
    ("bell\x07 nul\x00", "bell\\x07 nul\\x00"),
    ("\u202eevil", "\\u202eevil"),  # right-to-left override: it reorders what the user reads
    (None, None), (3, "3"),
])
def test_control_characters_are_shown_escaped(raw, shown):
    assert printable(raw) == shown
