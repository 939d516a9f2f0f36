"""How big a request body may be, per route, and how a big JSON body is parsed.

Rule (design.md, host-side safety): every size a caller controls has a bound that is checked
before memory is spent, and the error names the bound. For request bodies that means: the route's
bound from `BODY_LIMITS` is enforced by `BodyLimit` (app.py) while the bytes arrive, after the
caller was authenticated by `Gate` (gate.py); and a JSON body too big to parse quickly is parsed
with a bound on its number of values, because the C decoders (json, pydantic-core) hold the GIL for
the whole parse, even in a worker thread: 60 MiB of `[0,0,...]` froze the event loop for 1.7-2.3 s,
60 MiB of small strings for 4-6 s, whereas 72 MiB of one diff string parses in 0.3-0.4 s. So a big
body whose separators (`,` `:` `[` `{`, counted at C speed) allow at most `MAX_JSON_TOKENS` values is
parsed by the C decoder; any other big body by a pure-Python decoder in a worker thread (which lets
the loop run) that gives up after `MAX_JSON_TOKENS` values.
"""

from __future__ import annotations

import asyncio
import json
import json.decoder
import json.scanner
from collections.abc import Callable, Coroutine
from enum import Enum
from typing import Any

from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from corral.protocol.producer import MAX_STORED_FILE_BYTES

# The pure-Python JSON scanner's pieces (no stubs: they are not public API).
_pure_decoder: Any = json.decoder
_pure_scanner: Any = json.scanner

KiB = 1024
MiB = 1024 * KiB


class BodyClass(Enum):
    SMALL = "small"  # dequeue, heartbeat, mark*, cancelWatch, addExecutionLogEntry, repos, cancel
    LOG_APPEND = "log append"  # appendExecutionLogEntry
    LOG_ENTRY = "whole log"  # updateExecutionLogEntry (the plain protocol resends the whole output)
    GIT = "git"  # git-upload-pack negotiation (want/have lines)
    BIG = "big"  # uploadResult, producer job submit
    FILE = "file"  # a file put into the file store (PUT /api/v1/files/<bucket>/<key>)


# The bound of each class. BIG and LOG_ENTRY are the operator's `max_body_bytes` (default 64 MiB).
BODY_LIMITS: dict[BodyClass, int | None] = {
    # bytes: a heartbeat carries job ids and, from Sourcegraph executors, prometheusMetrics text.
    BodyClass.SMALL: 1 * MiB,
    # bytes: the executor sends at most 1 MiB of output per append (executor/logs.py MAX_SEND);
    # JSON escapes grow a byte to at most 6 ("\u001b"), plus a small envelope.
    BodyClass.LOG_APPEND: 8 * MiB,
    # bytes: `max_body_bytes`: the whole output so far, up to the server's `max_log_bytes`.
    BodyClass.LOG_ENTRY: None,
    # bytes: one `want` line per wanted object and `have` lines while negotiating a fetch.
    BodyClass.GIT: 16 * MiB,
    # bytes: `max_body_bytes`: the diff and output files of a result; the files of a job.
    BodyClass.BIG: None,
    # bytes: one stored file (and at most `max_body_bytes`).
    BodyClass.FILE: MAX_STORED_FILE_BYTES,
}
_BIG_ROUTES = ("/uploadResult",)
_JOB_SUBMIT_SUFFIX = "/jobs"  # POST /api/v1/queues/{queue}/jobs
_FILE_PUT_PREFIX = "/api/v1/files/"  # PUT /api/v1/files/{bucket}/{key}

PARSE_ON_LOOP = 1 * MiB  # bytes: a JSON body up to this size is parsed on the event loop (< ~10 ms)
MAX_JSON_TOKENS = 200_000  # values (strings, numbers, objects, arrays...) in one big JSON body


def body_class(method: str, path: str) -> BodyClass:
    """The body bound that applies to a request (paths as routed; anything unknown is SMALL)."""
    if path.startswith("/.executors/git/"):
        return BodyClass.GIT
    if path.startswith("/.executors/queue/"):
        if path.endswith(_BIG_ROUTES):
            return BodyClass.BIG
        if path.endswith("/appendExecutionLogEntry"):
            return BodyClass.LOG_APPEND
        if path.endswith("/updateExecutionLogEntry"):
            return BodyClass.LOG_ENTRY
        return BodyClass.SMALL
    if method == "POST" and path.startswith("/api/v1/queues/") and path.endswith(_JOB_SUBMIT_SUFFIX):
        return BodyClass.BIG
    if method == "PUT" and path.startswith(_FILE_PUT_PREFIX):
        return BodyClass.FILE
    return BodyClass.SMALL


def limit_for(cls: BodyClass, max_body_bytes: int) -> int:
    bound = BODY_LIMITS[cls]
    return max_body_bytes if bound is None else min(bound, max_body_bytes)


class TooComplex(ValueError):
    pass


def bounded_loads(raw: bytes, max_tokens: int = MAX_JSON_TOKENS) -> Any:
    """json.loads, but pure Python (so a worker thread running it lets the event loop run) and
    refusing a document with more than `max_tokens` values before building them all."""
    count = 0

    def tick() -> None:
        nonlocal count
        count += 1
        if count > max_tokens:
            raise TooComplex(f"the JSON body has more than {max_tokens} values")

    decoder: Any = json.JSONDecoder()  # its scanner's hooks are undocumented attributes
    parse_object, parse_array = decoder.parse_object, decoder.parse_array
    parse_string = _pure_decoder.py_scanstring

    def counted_number(kind: Any) -> Any:
        def parse(s: str) -> Any:
            tick()
            return kind(s)

        return parse

    def counted(fn: Any) -> Any:
        def parse(*args: Any, **kwargs: Any) -> Any:
            tick()
            return fn(*args, **kwargs)

        return parse

    decoder.parse_object = counted(parse_object)
    decoder.parse_array = counted(parse_array)
    decoder.parse_string = counted(parse_string)
    decoder.parse_int = counted_number(int)
    decoder.parse_float = counted_number(float)
    decoder.memo = {}
    decoder.scan_once = _pure_scanner.py_make_scanner(decoder)
    text = raw.decode("utf-8")
    return decoder.decode(text)


def tokens_upper_bound(raw: bytes) -> int:
    """At least the number of values in a JSON document (strings included), at C speed."""
    return 2 * (raw.count(b",") + raw.count(b":") + raw.count(b"[") + raw.count(b"{")) + 1


class BoundedJsonRequest(Request):
    """A Request whose `json()` parses a big body off the event loop, with MAX_JSON_TOKENS."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            raw = await self.body()
            if len(raw) <= PARSE_ON_LOOP or tokens_upper_bound(raw) <= MAX_JSON_TOKENS:
                self._json = json.loads(raw)
            else:
                try:
                    self._json = await asyncio.to_thread(bounded_loads, raw)
                except TooComplex as exc:
                    raise HTTPException(413, str(exc)) from None
                except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                    raise HTTPException(400, f"invalid request: the body is not JSON: {exc}") from None
        return self._json


class BoundedJsonRoute(APIRoute):
    """An APIRoute whose JSON body is parsed by BoundedJsonRequest."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def bounded(request: Request) -> Response:
            return await handler(BoundedJsonRequest(request.scope, request.receive))

        return bounded
