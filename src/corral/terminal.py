"""Neutralising terminal control sequences in text a job controls (its logs, commands, errors).

A job's output reaches an operator's terminal through `corral job logs`; left alone, it could set
the window title, write the clipboard (OSC 52), remap keys or hide text. `clean(text)` and the
streaming `Sanitizer` drop every escape sequence (CSI, OSC, DCS, SOS, PM, APC, and other ESC
sequences, in their 7-bit and C1 forms) and every other C0/C1 control character except `\\n` and
`\\t`. Printable text, including all other non-ASCII characters, passes unchanged.
"""

from __future__ import annotations

import re

MAX_HOLD = 4096  # characters of an unfinished sequence held back while streaming, at most

_STRING_START = r"(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f])"  # OSC, DCS, SOS, PM, APC
_INTRODUCERS = "\x07\x1b\x90\x98\x9b\x9c\x9d\x9e\x9f"
_STRING = rf"{_STRING_START}[^{_INTRODUCERS}]*(?:\x07|\x1b\\|\x9c)"  # a string ended by BEL or ST
_CSI = r"(?:\x1b\[|\x9b)[0-?]*[ -/]*[@-~]"
_ESC = r"\x1b[ -/]*[0-~]"  # any other ESC sequence (nF, Fp, Fe, Fs)
# What may still become a sequence when more text arrives (only at the very end of a chunk).
_UNFINISHED = (
    rf"(?:{_STRING_START}[^\x00-\x1f\x7f-\x9f]*\x1b?"
    r"|(?:\x1b\[|\x9b)[0-?]*[ -/]*"
    r"|\x1b[ -/]*)\Z"
)
_CONTROL = r"[\x00-\x08\x0b-\x1f\x7f-\x9f]"  # every other C0 and C1 control, and DEL
_ONE_SHOT = re.compile(f"{_STRING}|{_CSI}|{_ESC}|{_CONTROL}")
_STREAMING = re.compile(f"{_STRING}|(?P<unfinished>{_UNFINISHED})|{_CSI}|{_ESC}|{_CONTROL}")


def clean(text: str) -> str:
    """`text` without terminal control sequences or control characters (but `\\n` and `\\t`)."""
    return _ONE_SHOT.sub("", text)


class Sanitizer:
    """`clean` for text that arrives in pieces: a sequence split across pieces is still removed."""

    def __init__(self) -> None:
        self.held = ""

    def feed(self, text: str) -> str:
        text, self.held = self.held + text, ""
        out: list[str] = []
        pos = 0
        for m in _STREAMING.finditer(text):
            out.append(text[pos : m.start()])
            pos = m.end()
            if m.group("unfinished") is not None:
                if len(m.group()) <= MAX_HOLD:
                    self.held = m.group()
                else:  # too long to be a real sequence: drop its introducer, keep the text
                    out.append(clean(m.group()[1:]))
        out.append(text[pos:])
        return "".join(out)

    def flush(self) -> str:
        """The end of the stream: an unfinished sequence is dropped (its text is kept, inert)."""
        held, self.held = self.held, ""
        return clean(held[1:]) if held else ""
