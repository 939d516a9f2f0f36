"""What the server accepts as a job's result (uploadResult, a corral extension): bounded, and only
the files the job declared.

The request body as a whole is bounded by `max_body_bytes` before it is read (server.bodies); these
bounds are per part and hold whatever the operator sets that to. They equal the executor's own
(corral.executor.workspace: MAX_DIFF, MAX_OUTPUT_FILE, MAX_OUTPUTS_TOTAL), so an executor that keeps
its bounds never meets them; a result over one is refused (413, naming the bound) and nothing is
stored. A result may carry only the outputs its job declared (`outputs`), each valid base64: an
upload cannot plant a file the producer never asked for.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

from corral.errors import BadRequest, TooLarge
from corral.protocol import JobResult
from corral.protocol.producer import MAX_STEPS

__all__ = ["MAX_EXIT_CODES", "MAX_RESULT_DIFF", "MAX_RESULT_FILE", "MAX_RESULT_FILES_TOTAL", "check_result"]

MAX_RESULT_DIFF = 32 * 1024 * 1024  # bytes of the diff (UTF-8)
MAX_RESULT_FILE = 16 * 1024 * 1024  # bytes of one output file, decoded
MAX_RESULT_FILES_TOTAL = 16 * 1024 * 1024  # bytes of all output files together, decoded
MAX_EXIT_CODES = MAX_STEPS  # one exit code per step


def _decoded_size(path: str, content: str) -> int:
    try:
        return len(base64.b64decode(content, validate=True))
    except (binascii.Error, ValueError):
        raise BadRequest(f"output {path[:200]!r}: the content is not base64") from None


def check_result(body: JobResult, spec: Mapping[str, Any]) -> None:
    """Refuse a result over a bound (TooLarge) or naming a file the job did not declare (BadRequest)."""
    if len(body.exit_codes) > MAX_EXIT_CODES:
        raise TooLarge(
            f"the result has {len(body.exit_codes)} exit codes, over the limit of {MAX_EXIT_CODES}"
        )
    diff_bytes = len(body.diff.encode("utf-8", "surrogatepass"))
    if diff_bytes > MAX_RESULT_DIFF:
        raise TooLarge(f"the result's diff has {diff_bytes} bytes, over the limit of {MAX_RESULT_DIFF}")
    declared = set(spec.get("outputs") or ())
    undeclared = [p for p in body.files if p not in declared]
    if undeclared:
        shown = ", ".join(repr(p[:200]) for p in undeclared[:5])
        raise BadRequest(f"the result names files the job did not declare as outputs: {shown}")
    total = 0
    for path, content in body.files.items():
        if len(content) > 4 * ((MAX_RESULT_FILE + 2) // 3) + 4:  # longer than base64 of the bound
            raise TooLarge(f"output {path[:200]!r} is over the limit of {MAX_RESULT_FILE} bytes")
        size = _decoded_size(path, content)
        if size > MAX_RESULT_FILE:
            raise TooLarge(f"output {path[:200]!r} has {size} bytes, over the limit of {MAX_RESULT_FILE}")
        total += size
        if total > MAX_RESULT_FILES_TOTAL:
            raise TooLarge(f"the result's output files are over the limit of {MAX_RESULT_FILES_TOTAL} bytes")
