"""Every channel a job's text reaches a producer by passes the redactor, in the forms of issue 12: the
step's log, the executor's error message, the producer API's job view (its spec and error). Through the
real handler and server (corral.testing.Harness with the FakeRuntime), no root, docker or sockets."""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path

import pytest

from corral.executor.runtimes.base import JobSpace, OutputSink, Step, StepResult
from corral.terminal import clean
from corral.testing import FakeRuntime, Harness, fake_step
from tests.unit.redact_kit import leaks, percent_mix, stream_all, wrapped

SECRET = "sgp_0123456789abcdef0123456789abcdef01234567"
WRAPPED = wrapped(base64.b64encode(b"user:" + SECRET.encode()), 20).decode()  # four lines
HEXED = SECRET.encode().hex(":")
MIXED = percent_mix(SECRET, lambda i: i % 2 == 0).decode()


@pytest.fixture
async def h(tmp_path: Path):
    async with Harness(tmp_path) as harness:
        yield harness


async def run(h: Harness, *steps, runtime: FakeRuntime | None = None, **spec):
    job_id = await h.submit(*steps, redactedValues={SECRET: "[SECRET]"}, **spec)
    handler = h.handler(runtime or FakeRuntime())
    job = await h.dequeue(handler.client)
    await handler.handle(job)
    return job_id, await h.job(job_id)


async def test_step_output_is_redacted_in_every_form_split_across_writes(h: Harness) -> None:
    printed = f"wrapped:\n{WRAPPED}\nhex: {HEXED}\nurl: {MIXED}\nupper: {SECRET.upper()}\n"
    job_id, view = await run(h, fake_step(FAKE_OUTPUT=printed, FAKE_CHUNK=5))
    assert view["state"] == "completed", view
    out = (await h.logs(job_id))[0]["out"]
    assert out.count("[SECRET]") == 4, out
    assert not leaks(SECRET, out.encode()), out


async def test_a_secret_split_by_invisible_bytes_or_in_utf16_is_redacted_in_the_log(h: Harness) -> None:
    """Issue 12 review H1/H2: escape sequences, NULs, zero-width characters between the characters, and
    UTF-16 (what `corral job logs` and an ANSI-rendering viewer would show as the secret)."""
    half = len(SECRET) // 2
    printed = [
        SECRET[:half] + "\x1b[0m" + SECRET[half:],
        "\0".join(SECRET),
        SECRET[:half] + "\x1b]8;;http://x/\x1b\\" + SECRET[half:],
        "\x07".join(SECRET[:half]) + "\x7f" + SECRET[half:],
        "\u200b".join(SECRET),
        SECRET.encode("utf-16-le").decode("latin-1"),
        SECRET.encode("utf-16-be").decode("latin-1"),
    ]
    job_id, view = await run(h, fake_step(FAKE_OUTPUT="".join(p + "\n" for p in printed), FAKE_CHUNK=7))
    assert view["state"] == "completed", view
    out = (await h.logs(job_id))[0]["out"]
    assert out.count("[SECRET]") == len(printed), out
    shown = clean(out)  # what `corral job logs` prints
    assert SECRET not in shown and SECRET not in shown.replace("\u200b", ""), shown


async def test_the_executor_error_message_is_redacted(h: Harness) -> None:
    _job_id, view = await run(h, fake_step(FAKE_ERROR=f"pull failed: bad credentials {HEXED} / {MIXED}"))
    assert view["state"] == "errored", view
    assert view["error"].startswith("pull failed: bad credentials "), view["error"]
    assert not leaks(SECRET, view["error"].encode()), view["error"]


async def test_the_job_view_hides_every_form_in_the_spec(h: Harness) -> None:
    job_id = await h.submit(
        fake_step(FAKE_OUTPUT=f"{WRAPPED} {HEXED} {MIXED}"),
        redactedValues={SECRET: "[SECRET]"},
    )
    view = await h.job(job_id)
    text = json.dumps(view)
    assert SECRET not in text
    assert not leaks(SECRET, json.dumps(view["spec"]["dockerSteps"]).encode().replace(b"\\n", b"\n")), text


async def test_declared_outputs_holding_the_secret_are_redacted(h: Harness) -> None:
    job_id, view = await run(
        h, fake_step(FAKE_WRITE=f"out/config.txt=token={SECRET}\n{WRAPPED}\n"), outputs=["out/config.txt"]
    )
    assert view["state"] == "completed", view
    r = await h.admin.get(f"/api/v1/jobs/{job_id}/result")
    assert r.status_code == 200, r.text
    content = base64.b64decode(r.json()["files"]["out/config.txt"])
    assert content.startswith(b"token=[SECRET]"), content
    assert not leaks(SECRET, content), content
    logs = await h.logs(job_id)
    note = [e for e in logs if e["key"] == "results.redacted"]
    assert len(note) == 1 and "output(s) out/config.txt" in note[0]["out"], logs


def executor_lines(caplog: pytest.LogCaptureFixture) -> str:
    """Every corral.executor log line as the executor's handler would print it (tracebacks too)."""
    fmt = logging.Formatter("%(name)s %(levelname)s %(message)s")
    return "\n".join(fmt.format(r) for r in caplog.records if r.name.startswith("corral.executor"))


async def test_a_missing_image_naming_the_secret_is_redacted_in_the_log_the_error_and_the_process_log(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="corral.executor")
    image = f"127.0.0.1:5000/{SECRET.lower()}:{SECRET.encode().hex()}"  # a tag holds 128 characters
    job_id, view = await run(h, fake_step(image=image, FAKE_IMAGE_MISSING=1))
    assert view["state"] == "failed", view
    assert "not found" in view["error"] and not leaks(SECRET, view["error"].encode()), view["error"]
    entry = (await h.logs(job_id))[0]
    text = json.dumps(entry["command"]) + entry["out"]
    assert "not found" in entry["out"] and not leaks(SECRET, text.encode()), entry
    lines = executor_lines(caplog)
    assert f"job {view['id']}: failed" in lines, lines
    assert not leaks(SECRET, lines.encode()), lines


class CrashingRuntime(FakeRuntime):
    """A runtime with a bug that puts job text into an exception (a traceback in the process log)."""

    async def run_step(self, space: JobSpace, step: Step, output: OutputSink) -> StepResult:
        raise ValueError(f"cannot parse {step.argv!r} for {WRAPPED}")


async def test_the_executors_own_log_lines_are_redacted_tracebacks_included(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="corral.executor")
    _job_id, view = await run(
        h,
        fake_step(FAKE_OUTPUT="x"),
        runtime=CrashingRuntime(),
        outputs=[f"out/{SECRET}.txt"],  # missing: its path is logged as a problem
    )
    assert view["state"] == "errored", view
    lines = executor_lines(caplog)
    assert "Traceback" in lines and "ValueError: cannot parse" in lines, lines
    assert "[SECRET]" in lines, lines
    assert SECRET not in lines and not leaks(SECRET, lines.encode()), lines
    assert not leaks(SECRET, view["error"].encode()), view["error"]


async def test_a_runtime_error_echoing_credentials_is_redacted_everywhere(
    h: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """A registry's answer echoing the user name and the password (base64 of user:password, as the
    Authorization header carries it)."""
    caplog.set_level(logging.DEBUG, logger="corral.executor")
    echoed = f"unauthorized: authentication required for {SECRET} (Basic {WRAPPED.replace(chr(10), '')})"
    job_id, view = await run(h, fake_step(FAKE_ERROR=echoed))
    assert view["state"] == "errored", view
    out = "".join(e["out"] for e in await h.logs(job_id))
    for text in (view["error"], out, executor_lines(caplog)):
        assert "unauthorized" in text or text is out, text
        assert not leaks(SECRET, text.encode()), text


def test_records_outside_a_job_are_untouched(caplog: pytest.LogCaptureFixture) -> None:
    from corral.executor.redact import Redactor, records

    records.install()
    caplog.set_level(logging.INFO, logger="corral.executor")
    logging.getLogger("corral.executor").info("outside %s", SECRET)
    token = records.use(Redactor({SECRET: "[SECRET]"}))
    try:
        logging.getLogger("corral.executor.x").info("inside %s", SECRET)
    finally:
        records.reset(token)
    assert [r.getMessage() for r in caplog.records] == [f"outside {SECRET}", "inside [SECRET]"]


def test_base64_wrapped_with_escaped_line_breaks_is_redacted() -> None:
    from corral.executor.redact import Redactor

    long_secret = SECRET * 2  # its base64 wraps
    printed = json.dumps({"config": base64.encodebytes(b"u:" + long_secret.encode()).decode()})
    out = Redactor({long_secret: "[SECRET]"}).redact_text(printed)
    assert not leaks(long_secret, out.encode().replace(b"\\n", b"\n")), out


@pytest.mark.parametrize(
    "form",
    ["json", "json-in-json", "u000a", "php-slashes", "crlf-repr"],
)
def test_base64_wrapped_in_escaped_strings_is_redacted(form: str) -> None:
    """A wrapped blob as careless code prints it inside a string: JSON's `\\n`, a JSON document held
    in a JSON string (`\\\\n`: docker's json-file log of a JSON line, an AWS SecretString), `\\u000a`,
    PHP's json_encode escaping `/`, Python's repr of CRLF-wrapped base64; as one write and byte by
    byte."""
    from corral.executor.redact import Redactor

    long_secret = SECRET * 3 + "/+?>"  # wraps, and its base64 holds / and +
    blob = base64.encodebytes(b"u:" + long_secret.encode()).decode()
    if form == "json":
        printed, unwrap = json.dumps({"config": blob}), lambda t: json.loads(t)["config"]
    elif form == "json-in-json":
        printed = json.dumps({"log": json.dumps({"config": blob})})
        unwrap = lambda t: json.loads(json.loads(t)["log"])["config"]  # noqa: E731
    elif form == "u000a":
        printed, unwrap = json.dumps(blob).replace("\\n", "\\u000a"), json.loads
    elif form == "php-slashes":
        printed, unwrap = json.dumps(blob).replace("/", "\\/"), json.loads
    else:
        printed = repr(blob.replace("\n", "\r\n"))
        unwrap = lambda t: t.encode().decode("unicode_escape")  # noqa: E731
    assert leaks(long_secret, unwrap(printed).encode())  # (the check sees the blob)
    r = Redactor({long_secret: "[SECRET]"})
    out = r.redact_text(printed)
    assert "[SECRET]" in out and not leaks(long_secret, unwrap(out).encode()), out
    data = printed.encode()
    assert stream_all(r, data, list(range(len(data)))) == out.encode()


@pytest.mark.parametrize(
    ("secret", "group"),
    [
        (SECRET, 4),
        (SECRET, 8),
        ("Tok3n-Secr3t", 6),
        ("S3cr3tValue!!", 7),
        (SECRET[:43], 4),  # (groups from the right: the first is 6 digits, od's offset shape)
        (SECRET[:43], 8),
    ],
)
def test_hex_grouped_by_python_is_no_dump_line(secret: str, group: int) -> None:
    """`bytes.hex(" ", n)`: its first group is no dump offset (a review find: read as one, it was
    skipped and the rest of the line left unredacted)."""
    from corral.executor.redact import Redactor

    out = Redactor({secret: "[SECRET]"}).redact(b"\n" + secret.encode().hex(" ", group).encode() + b"\n")
    assert out == b"\n[SECRET]\n", out


def test_the_squeezed_views_escape_regex_matches_exactly_its_table() -> None:
    """_SQUEEZE_TOKEN is written out for speed (an alternation of its 68 keys cost ~2x); every key
    matches it whole, and every string of its shapes (a prefix and one or two characters) that it
    matches is a key, so a token always has its value."""
    import itertools

    from corral.executor.redact.views import _SQUEEZE_TOKEN, _SQUEEZE_VALUES

    assert all(_SQUEEZE_TOKEN.fullmatch(key) for key in _SQUEEZE_VALUES)
    tail = [bytes([c]) for c in b"0123456789abcdefABCDEFtnvfrxu/\\%"]
    tails = tail + [a + b for a, b in itertools.product(tail, tail)]
    prefixes = [b"\\", b"\\\\", b"%", b"\\x", b"\\u00", b"\\0"]
    matched = {p + t for p in prefixes for t in tails if _SQUEEZE_TOKEN.fullmatch(p + t)}
    assert matched == set(_SQUEEZE_VALUES)
