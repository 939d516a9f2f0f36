"""corral.console.LogPrinter: a job's log events as whole, clean lines."""

from __future__ import annotations

import io

from corral.console import MAX_LINE, LogPrinter, overwritten
from corral.protocol import EntryEvent, ExitEvent, OutputEvent, StateEvent


def entry(eid: int, key: str = "step.docker.0", attempt: int | None = 1) -> EntryEvent:
    return EntryEvent(entry_id=eid, key=key, command=["sh", "-c", "x"], attempt=attempt)


def out(eid: int, data: str) -> OutputEvent:
    return OutputEvent(entry_id=eid, data=data)


def end(eid: int, code: int | None = 0, ms: int | None = 5) -> ExitEvent:
    return ExitEvent(entry_id=eid, exit_code=code, duration_ms=ms)


def printed(*events: object, **kw: object) -> list[str]:
    buf = io.StringIO()
    p = LogPrinter(out=buf, **kw)  # type: ignore[arg-type]
    for ev in events:
        p.event(ev)  # type: ignore[arg-type]
    p.close()
    return buf.getvalue().splitlines()


def test_a_line_split_across_chunks_is_printed_once_and_whole() -> None:
    lines = printed(entry(1), out(1, "hel"), out(1, "lo wor"), out(1, "ld\nnext"), out(1, " line\n"), end(1))
    assert lines == ["▶ step.docker.0  $ sh -c x", "  hello world", "  next line", "  ⏹ exit 0 (5 ms)"]


def test_a_line_without_its_end_is_printed_when_the_entry_ends() -> None:
    assert printed(entry(1), out(1, "no newline"), end(1, 3))[1:] == ["  no newline", "  ⏹ exit 3 (5 ms)"]


def test_two_entries_interleaved_keep_their_own_lines() -> None:
    lines = printed(
        entry(1), entry(2, "step.docker.1"), out(1, "one "), out(2, "two "), out(1, "a\n"), out(2, "b\n")
    )
    assert "  one a" in lines and "  two b" in lines


def test_carriage_returns_show_what_a_terminal_would() -> None:
    progress = (
        "Counting objects:  25% (1/4)\rCounting objects:  50% (2/4)\rCounting objects: 100% (4/4), done.\n"
    )
    assert printed(entry(1), out(1, progress), out(1, "crlf line\r\n"))[1:] == [
        "  Counting objects: 100% (4/4), done.",
        "  crlf line",
    ]
    assert overwritten("a\rb\r") == "b" and overwritten("plain") == "plain"


def test_control_sequences_are_removed_even_when_split_across_chunks() -> None:
    lines = printed(entry(1), out(1, "a\x1b]52;c;ZXZpbA"), out(1, "==\x07b \x1b[31mred\x1b[0m\n"))
    assert lines[1] == "  ab red"
    assert all("\x1b" not in line for line in lines)


def test_raw_prints_the_output_exactly() -> None:
    data = "a\x1b[31mred\rover"
    buf = io.StringIO()
    p = LogPrinter(out=buf, raw=True)
    for ev in (entry(1), out(1, data), end(1)):
        p.event(ev)
    assert buf.getvalue() == f"▶ step.docker.0  $ sh -c x\n{data}\n  ⏹ exit 0 (5 ms)\n"


def test_an_endless_line_is_cut_into_bounded_pieces() -> None:
    lines = printed(entry(1), out(1, "x" * (MAX_LINE * 2 + 10)), end(1))
    assert [len(line) for line in lines[1:-1]] == [MAX_LINE + 2, MAX_LINE + 2, 12]


def test_quiet_setup_is_one_line_when_it_succeeds() -> None:
    lines = printed(
        entry(1, "setup.git.init"),
        out(1, "Initialized\n"),
        end(1, 0, 10),
        entry(2, "setup.git.fetch"),
        out(2, "remote: Counting objects: 100%\n"),
        end(2, 0, 30),
        entry(3),
        out(3, "work\n"),
        end(3),
        quiet_setup=True,
    )
    assert lines == [
        "✓ setup: git init, fetch (40 ms)",
        "▶ step.docker.0  $ sh -c x",
        "  work",
        "  ⏹ exit 0 (5 ms)",
    ]


def test_a_failing_quiet_setup_entry_is_printed_whole() -> None:
    lines = printed(
        entry(1, "setup.git.init"),
        end(1, 0, 10),
        entry(2, "setup.git.fetch"),
        out(2, "fatal: couldn't find remote ref\n"),
        end(2, 128, 30),
        StateEvent(state="errored", error="clone failed"),
        quiet_setup=True,
    )
    assert lines == [
        "✓ setup: git init (10 ms)",
        "▶ setup.git.fetch  $ sh -c x",
        "  fatal: couldn't find remote ref",
        "  ⏹ exit 128 (30 ms)",
        "● job errored: clone failed",
    ]


def test_a_new_attempt_is_announced_and_an_end_without_exit_code_is_said() -> None:
    lines = printed(
        entry(1, attempt=1),
        out(1, "working\n"),
        end(1, None, None),
        entry(2, "setup.git.init", attempt=2),
        StateEvent(state="canceled", error="canceled"),
    )
    assert lines == [
        "▶ step.docker.0  $ sh -c x",
        "  working",
        "  ⏹ ended without an exit code",
        "↻ attempt 1 lost; attempt 2",
        "▶ setup.git.init  $ sh -c x",
        "● job canceled",
    ]
    assert not any("None" in line for line in lines)


def test_the_prefix_starts_every_line() -> None:
    lines = printed(entry(1), out(1, "a\nb\n"), end(1), prefix="local/api │ ")
    assert all(line.startswith("local/api │ ") for line in lines)


def test_an_attempt_that_errored_is_told_apart_from_a_lost_one() -> None:
    lines = printed(
        entry(1, "setup.git.fetch", attempt=1),
        out(1, "fatal: unable to access\n"),
        end(1, 128, 9),
        entry(2, "setup.git.init", attempt=2),
        end(2, 0, 3),
        quiet_setup=True,
    )
    assert "↻ attempt 1 failed (setup.git.fetch exit 128); attempt 2" in lines
