"""The terminal sanitiser against hostile job output."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corral.terminal import GAP, MAX_HOLD, RUN_MAX, SEQ_STRING, Sanitizer, clean

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
    # too long for a string: no sequence (ESC ] is removed as a two-byte ESC sequence), shown inert
    assert first.startswith("52;c;AAAA") and "\x1b" not in first
    assert s.feed("tail") == "tail"


def test_unterminated_sequence_at_the_end_is_dropped() -> None:
    s = Sanitizer()
    assert s.feed("ok\x1b[3") == "ok"
    assert s.flush() == "3"  # as clean() shows it: ESC [ is an ESC sequence of its own


def test_a_long_run_of_removed_characters_shows_as_a_space() -> None:
    """The redactor does not join text across a long run of invisible bytes (its hold-back is bounded),
    so neither does clean(): it shows the run as a space."""
    assert clean("a" + "\x1b[0m" * 30 + "b") == "ab"  # 120 bytes
    assert clean("a" + "\x1b[0m" * 33 + "b") == "a b"  # 132 bytes > RUN_MAX
    assert clean("a" + "\x00" * RUN_MAX + "b") == "ab"
    assert clean("a" + "\x00" * (RUN_MAX + 1) + "b") == "a b"
    assert clean("a" + "\r" * GAP + "b") == "ab"
    assert clean("a" + "\r" * (GAP + 1) + "b") == "a b"
    assert clean("a" + "\x85" * (RUN_MAX // 2 + 1) + "b") == "a b"  # C1: two bytes each in UTF-8
    osc = "\x1b]0;" + "t" * (SEQ_STRING - 2) + "\x07"
    assert clean("a" + osc + "b") == "ab"
    assert clean("a" + osc.replace("tt", "ttt", 1) + "b") == "a0;" + "t" * (SEQ_STRING - 1) + "b"


PIECES = st.sampled_from(
    ["\x1b[0m", "\x1b[", "\x1b]8;;http://x/\x1b\\", "\x1b]0;", "\x07", "\x1b", "\x9b", "\x9d", "\x9c",
     "\x00", "\x7f", "\r", "\x0b", "\n", "\t", " ", "a", "bc", "é", "\x1b[?1049h", "\x1b(B", "\x1b\\",
     "\x1b[" + "1;" * 20 + "m", "\x00" * 40, "\r" * 9]
)  # fmt: skip


@settings(max_examples=300, deadline=None, database=None)
@given(pieces=st.lists(PIECES, max_size=40), cuts=st.lists(st.integers(0, 400), max_size=10))
def test_the_sanitizer_equals_clean_for_any_split(pieces: list[str], cuts: list[int]) -> None:
    text = "".join(pieces)
    s = Sanitizer()
    out, last = [], 0
    for p in [*sorted({c for c in cuts if 0 < c < len(text)}), len(text)]:
        out.append(s.feed(text[last:p]))
        assert len(s.held) <= MAX_HOLD
        last = p
    out.append(s.flush())
    assert "".join(out) == clean(text)
