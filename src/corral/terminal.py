"""Neutralising terminal control sequences in text a job controls (its logs, commands, errors).

A job's output reaches an operator's terminal through `corral job logs`; left alone, it could set
the window title, write the clipboard (OSC 52), remap keys or hide text. `clean(text)` and the
streaming `Sanitizer` drop every escape sequence (CSI, OSC, DCS, SOS, PM, APC, and other ESC
sequences, in their 7-bit and C1 forms) and every other C0/C1 control character except `\\n` and
`\\t`. Printable text, including all other non-ASCII characters, passes unchanged.

The grammar is bounded, and shared with the redactor's "visible" view
(corral.executor.redact.visible), which removes at least what `clean` removes, so that `clean` never
joins the pieces of a secret the redactor did not see joined:
    * a sequence has at most SEQ_PARAMS parameter and SEQ_INTERMEDIATES intermediate bytes, a string
      (OSC, DCS, ...) at most SEQ_STRING printable ASCII characters before its BEL or ST; anything
      longer is no sequence: its introducer is removed as a control and its text is shown, inert;
    * a run of removed characters that is long (more than RUN_MAX bytes in UTF-8, or more than GAP
      of `\\r`, `\\v`, `\\f`) is shown as one space instead of nothing: the redactor does not join
      text across such a run either (it would have to hold back unbounded output).
"""

from __future__ import annotations

import re

SEQ_PARAMS = 32  # parameter bytes of a CSI sequence, at most
SEQ_INTERMEDIATES = 4  # intermediate bytes of an ESC or CSI sequence, at most
SEQ_STRING = 64  # characters of an OSC/DCS/SOS/PM/APC string, at most
RUN_MAX = 128  # bytes (UTF-8) of removed characters in a row that are removed; a longer run -> " "
GAP = 16  # \r, \v, \f in a removed run, at most (the redactor's whitespace gap); more -> " "
LINE_CONTROLS = "\r\x0b\x0c"  # whitespace to the redactor, removed here

# 7-bit forms. (The redactor's visible view builds its byte grammar from the same bounds.)
_STRING_START = r"(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f])"  # OSC, DCS, SOS, PM, APC
_STRING = rf"{_STRING_START}[\x20-\x7e]{{0,{SEQ_STRING}}}(?:\x07|\x1b\\|\x9c)"  # ended by BEL or ST
_CSI = rf"(?:\x1b\[|\x9b)[0-?]{{0,{SEQ_PARAMS}}}[ -/]{{0,{SEQ_INTERMEDIATES}}}[@-~]"
_ESC = rf"\x1b[ -/]{{0,{SEQ_INTERMEDIATES}}}[0-~]"  # any other ESC sequence (nF, Fp, Fe, Fs)
_CONTROL = r"[\x00-\x08\x0b-\x1f\x7f-\x9f]"  # every other C0 and C1 control, and DEL
_TOKEN = f"{_STRING}|{_CSI}|{_ESC}|{_CONTROL}"
_RUN = re.compile(f"(?:{_TOKEN})+")
# What may still become a longer sequence when more text arrives (only at the very end of a piece).
_UNFINISHED = re.compile(
    rf"(?:{_STRING_START}[\x20-\x7e]{{0,{SEQ_STRING}}}\x1b?"
    rf"|(?:\x1b\[|\x9b)[0-?]{{0,{SEQ_PARAMS}}}[ -/]{{0,{SEQ_INTERMEDIATES}}}"
    rf"|\x1b[ -/]{{0,{SEQ_INTERMEDIATES}}})\Z"
)
TOKEN_MAX = 2 + SEQ_STRING + 2  # characters of the longest sequence
MAX_HOLD = RUN_MAX + TOKEN_MAX  # characters held back while streaming, at most


def long_run(run: str) -> bool:
    """Whether a run of removed characters is shown as a space (see the module docstring)."""
    return sum(map(run.count, LINE_CONTROLS)) > GAP or len(run.encode("utf-8", "surrogatepass")) > RUN_MAX


def _replace(m: re.Match[str]) -> str:
    return " " if long_run(m.group()) else ""


def clean(text: str) -> str:
    """`text` without terminal control sequences or control characters (but `\\n` and `\\t`)."""
    return _RUN.sub(_replace, text)


class Sanitizer:
    """`clean` for text that arrives in pieces: the concatenated output of `feed`s and `flush` is
    `clean` of the concatenated input, for any split; at most MAX_HOLD characters are held back."""

    def __init__(self) -> None:
        self.held = ""
        self.in_run = False  # the last output ended in a long run (shown as its space already)

    def feed(self, text: str) -> str:
        text, self.held = self.held + text, ""
        m = _UNFINISHED.search(text, max(0, len(text) - TOKEN_MAX))
        cut = m.start() if m else len(text)
        out: list[str] = []
        pos = 0
        for r in _RUN.finditer(text, 0, cut):
            if r.start() > pos:
                out.append(text[pos : r.start()])
                self.in_run = False
            continuing = self.in_run and r.start() == 0
            if r.end() == cut:  # the run may go on (an unfinished sequence after it is removed too)
                if not continuing and not long_run(r.group()):
                    self.held = text[r.start() :]  # decide when it ends
                    return "".join(out)
                if not continuing:
                    out.append(" ")
                self.in_run = True
                self.held = text[cut:]
                return "".join(out)
            if not continuing:
                out.append(_replace(r))
            self.in_run = False
            pos = r.end()
        if cut > pos:
            out.append(text[pos:cut])
            self.in_run = False
        self.held = text[cut:]
        return "".join(out)

    def flush(self) -> str:
        """The end of the stream: what is held is cleaned as `clean` would (an unfinished sequence's
        introducer is removed, its text kept, inert)."""
        held, self.held = self.held, ""
        r = _RUN.match(held) if self.in_run else None
        self.in_run = False
        if r is not None:  # the long run went on: its space is out already
            return clean(held[r.end() :])
        return clean(held)
