"""The terminal sanitiser against hostile job output."""

from __future__ import annotations

import pytest

from corral.terminal import MAX_HOLD, Sanitizer, clean

HOSTILE = [
    ("\x1b]52;c;ZXZpbA==\x07after", "after"),  # OSC 52 clipboard write, BEL-terminated
    ("\x1b]52;c;ZXZpbA==\x1b\\after", "after"),  # ... ST-terminated
    ("\x1b]0;pwned title\x07x", "x"),  # window title
    ("\x9d0;c1 title\x9cx", "x"),  # the same in C1 form (U+009D ... U+009C)
    ("a\x1b[31mred\x1b[0m b", "ared b"),  # CSI colours
    ("\x9b2Jcleared", "cleared"),  # C1 CSI
    ("\x1b[?1049h\x1b[2J\x1b[Hx", "x"),  # alternate screen, clear, home
    ("\x1bPqsixel\x1b\\y", "y"),  # DCS
    ("\x1b_apc\x1b\\\x1b^pm\x1b\\\x1bXsos\x1b\\z", "z"),  # APC, PM, SOS
    ("\x1b7\x1b8\x1b(0\x1bc!", "!"),  # save/restore cursor, charset, reset
    ("bell\x07 bs\x08 cr\r del\x7f nul\x00 end", "bell bs cr del nul end"),
    ("\x85next-line \x8fss3 \x9fapc", "next-line ss3 apc"),  # lone C1 controls
    ("tab\tand\nnewline ünïcödé ✓", "tab\tand\nnewline ünïcödé ✓"),  # kept
    ("\x1b]8;;http://evil/\x1b\\link\x1b]8;;\x1b\\", "link"),  # hyperlinks
]


@pytest.mark.parametrize(("text", "want"), HOSTILE)
def test_clean(text: str, want: str) -> None:
    assert clean(text) == want


@pytest.mark.parametrize(("text", "want"), HOSTILE)
def test_split_anywhere(text: str, want: str) -> None:
    """Split into two pieces at every point, and into single characters: the same result."""
    for cut in range(len(text) + 1):
        s = Sanitizer()
        got = s.feed(text[:cut]) + s.feed(text[cut:]) + s.flush()
        assert got == want, (cut, got)
    s = Sanitizer()
    assert "".join(s.feed(c) for c in text) + s.flush() == want


def test_no_escape_or_control_survives_random_splits() -> None:
    text = "".join(t for t, _ in HOSTILE) * 3 + "\x1b]52;c;unterminated"
    for size in (1, 2, 3, 5, 7, 64):
        s = Sanitizer()
        out = "".join(s.feed(text[i : i + size]) for i in range(0, len(text), size)) + s.flush()
        assert not any((ord(c) < 0x20 and c not in "\n\t") or 0x7F <= ord(c) <= 0x9F for c in out), out


def test_an_endless_sequence_is_not_held_forever() -> None:
    s = Sanitizer()
    first = s.feed("\x1b]52;c;" + "A" * (MAX_HOLD + 10))
    assert first.startswith("]52;c;AAAA") and "\x1b" not in first  # released, inert
    assert s.feed("tail") == "tail"


def test_unterminated_sequence_at_the_end_is_dropped() -> None:
    s = Sanitizer()
    assert s.feed("ok\x1b[3") == "ok"
    assert s.flush() == "[3"
