"""Unit tests for corral.executor.redact: literal secrets, their encodings, and streaming."""

from __future__ import annotations

import base64
import inspect
import json
import random
import re
import string
import threading
from collections.abc import Callable
from types import SimpleNamespace
from urllib.parse import quote, quote_plus

import pytest

from corral.executor.handler import JobHandler, StepFailed
from corral.executor.redact import (
    DEFAULT_REPLACEMENT,
    LONG_PATTERN,
    MAX_SECRET_BYTES,
    MAX_VALUES,
    MIN_PART,
    MIN_SECRET,
    Matcher,
    RedactionLimitError,
    Redactor,
    RedactorCache,
    StreamRedactor,
    cache_key,
    check_limits,
)
from corral.protocol import Job

TOKEN = "sgp_4f1c2d9e8b7a6f5e4d3c2b1a0f9e8d7c"
R = "[TOKEN]"
# bytes >= 0x80 make "+" and "/" likely in base64, so the URL-safe forms differ from the standard ones
WEIRD = "s3cr\u00e9t~?>>\u00ff\u00fe-p\u00e4ss"
W = "[WEIRD]"


def stream_all(redactor: Redactor, chunks: list[bytes]) -> bytes:
    stream = redactor.stream()
    out = [stream.feed(chunk) for chunk in chunks]
    out.append(stream.flush())
    return b"".join(out)


def random_chunks(data: bytes, rng: random.Random, max_size: int) -> list[bytes]:
    chunks, i = [], 0
    while i < len(data):
        size = rng.randint(0, max_size)  # empty chunks too
        chunks.append(data[i : i + size])
        i += size
    return chunks


def substrings(secret: bytes, size: int) -> set[bytes]:
    return {secret[i : i + size] for i in range(len(secret) - size + 1)}


# ---------------------------------------------------------------------------------------------------
# literal values


def test_literal_is_replaced_with_its_replacement() -> None:
    r = Redactor({TOKEN: R, "hunter2-password": "[PW]"})
    out = r.redact(f"token={TOKEN} pw=hunter2-password again {TOKEN}\n".encode())
    assert out == b"token=[TOKEN] pw=[PW] again [TOKEN]\n"


def test_extra_values_get_the_default_replacement() -> None:
    r = Redactor({TOKEN: R}, extra=["executor-own-token-1234"])
    out = r.redact(b"a executor-own-token-1234 b " + TOKEN.encode())
    assert out == f"a {DEFAULT_REPLACEMENT} b {R}".encode()
    assert (
        Redactor(extra=["executor-own-token-1234"], default="<x>").redact(b"executor-own-token-1234")
        == b"<x>"
    )


def test_explicit_replacement_wins_over_extra_for_the_same_value() -> None:
    r = Redactor({TOKEN: R}, extra=[TOKEN])
    assert r.redact(TOKEN.encode()) == R.encode()


def test_empty_values_are_ignored() -> None:
    r = Redactor({"": "[E]"}, extra=["", ""])
    assert not r
    data = b"nothing to see here"
    assert r.redact(data) == data
    assert r.redact_text("text") == "text"


def test_short_secret_is_redacted_literally_but_not_its_encodings() -> None:
    short = "abc"
    assert len(short) < MIN_SECRET
    r = Redactor({short: "[S]"})
    assert r.redact(b"xabcx 616263 YWJj") == b"x[S]x 616263 YWJj"


def test_encoded_forms_shorter_than_min_encoded_are_kept() -> None:
    r = Redactor({"wxyz": "[S]"})  # MIN_SECRET characters: encodings apply...
    assert len("wxyz") == MIN_SECRET
    # ...but base64 of 4 bytes leaves at most 5 characters that depend only on them (fewer than
    # MIN_ENCODED): too short to redact without destroying ordinary output. The 8-character hex is fine.
    assert base64.b64encode(b"wxyz") == b"d3h5eg=="
    assert r.redact(b"d3h5eg== 7778797a 7778797A") == b"d3h5eg== [S] [S]"


def test_no_match_passes_data_through_unchanged() -> None:
    r = Redactor({TOKEN: R})
    data = bytes(range(256)) * 4
    assert r.redact(data) == data


def test_repr_never_shows_secrets() -> None:
    r = Redactor({TOKEN: R}, extra=["executor-own-token-1234"])
    stream = r.stream()
    stream.feed(b"partial " + TOKEN.encode()[:5])
    for text in (repr(r), repr(stream)):
        assert TOKEN not in text and "executor-own" not in text and TOKEN[:5] not in text


# ---------------------------------------------------------------------------------------------------
# encodings


@pytest.mark.parametrize("urlsafe", [False, True], ids=["standard", "urlsafe"])
@pytest.mark.parametrize("before", [b"", b"x", b"xy"], ids=["offset0", "offset1", "offset2"])
@pytest.mark.parametrize("after", [b"", b"y", b"yz"], ids=["end0", "end1", "end2"])
def test_base64_in_every_alignment_is_redacted_and_unrecoverable(
    urlsafe: bool, before: bytes, after: bytes
) -> None:
    secret = WEIRD.encode()
    encode = base64.urlsafe_b64encode if urlsafe else base64.b64encode
    decode = base64.urlsafe_b64decode if urlsafe else base64.b64decode
    blob = encode(before + secret + after)
    standard = base64.b64encode(before + secret + after)
    assert b"+" in standard and b"/" in standard  # so the URL-safe alphabet really differs
    r = Redactor({WEIRD: W})
    out = r.redact(b"Authorization: Basic " + blob + b"\n")

    assert blob not in out and out.count(W.encode()) == 1
    redacted = out.removeprefix(b"Authorization: Basic ").removesuffix(b"\n")
    head, tail = redacted.split(W.encode())
    # left: the neighbours' characters and one mixed; right: the same and "==" padding
    assert len(head) <= 3 and len(tail) <= 6
    # Put decodable filler where the replacement is: what decodes must not contain the secret.
    filler = b"A" * (len(blob) - len(head) - len(tail))
    decoded = decode(head + filler + tail)
    assert not substrings(secret, 3) & substrings(decoded, 3)


def test_base64_of_a_larger_document_is_redacted() -> None:
    r = Redactor({TOKEN: R})
    for doc in (f'{{"auths":{{"ghcr.io":{{"auth":"u:{TOKEN}"}}}}}}', f"user:{TOKEN}", f"{TOKEN}\n"):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            blob = encode(doc.encode())
            out = r.redact(b"config: " + blob)
            assert R.encode() in out
            kept = out.removeprefix(b"config: ").split(R.encode())
            assert len(kept) == 2
            filler = b"A" * (len(blob) - len(kept[0]) - len(kept[1]))
            decode = base64.urlsafe_b64decode if encode is base64.urlsafe_b64encode else base64.b64decode
            decoded = decode(kept[0] + filler + kept[1])
            assert not substrings(TOKEN.encode(), 3) & substrings(decoded, 3)


def lower_escapes(s: str) -> str:
    return re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), quote(s, safe=""))


@pytest.mark.parametrize(
    "encode",
    [lambda s: quote(s, safe=""), quote, quote_plus, lower_escapes],
    ids=["quote-safe-empty", "quote-default", "quote_plus", "lowercase-escapes"],
)
def test_url_encodings_are_redacted(encode: Callable[[str], str]) -> None:
    secret = "p@ss w/rd+&=\u00e9\u00e8!"
    form = encode(secret)
    assert form != secret
    r = Redactor({secret: "[U]"})
    out = r.redact(f"GET /api?token={form}&x=1".encode())
    assert out == b"GET /api?token=[U]&x=1"


@pytest.mark.parametrize("ensure_ascii", [True, False])
def test_json_escaped_secret_is_redacted(ensure_ascii: bool) -> None:
    secret = 'he said "hi"\n\tC:\\path/\u00fcn\u00efc\u00f6de \u2603 end'
    r = Redactor({secret: "[J]"})
    doc = json.dumps({"password": secret, "n": 1}, ensure_ascii=ensure_ascii).encode()
    out = r.redact(doc)
    assert json.loads(out) == {"password": "[J]", "n": 1}
    # PHP-style escaped slashes too
    escaped = json.dumps(secret, ensure_ascii=ensure_ascii)[1:-1].replace("/", "\\/").encode()
    assert r.redact(b"[" + escaped + b"]") == b"[[J]]"


@pytest.mark.parametrize("upper", [False, True])
def test_hex_is_redacted(upper: bool) -> None:
    r = Redactor({WEIRD: W})
    hexed = WEIRD.encode().hex()
    hexed = hexed.upper() if upper else hexed
    assert r.redact(f"dump: {hexed}.".encode()) == f"dump: {W}.".encode()


def test_each_line_of_a_multiline_secret_is_redacted() -> None:
    secret = "-----BEGIN KEY-----\nMIIEvQIBADANBgkqhkiG9w0B\n  indented-line-2  \nab\n-----END KEY-----\n"
    r = Redactor({secret: "[K]"})
    # matched whitespace-blind: the match ends at the last visible character, the line end stays
    assert r.redact(secret.encode()) == b"[K]\n"
    assert r.redact(secret.replace("\n", "\r\n").encode()) == b"[K]\r\n"  # what a pty prints
    assert r.redact(b"line: MIIEvQIBADANBgkqhkiG9w0B!") == b"line: [K]!"
    assert r.redact(b"> indented-line-2 <") == b"> [K] <"
    # PEM armor and short lines are common: redacting them alone would mask ordinary output
    assert r.redact(b"-----END KEY-----") == b"-----END KEY-----"
    assert len("ab") < MIN_PART and r.redact(b"ab cab") == b"ab cab"


def test_long_secret_and_its_encodings_are_redacted() -> None:
    rng = random.Random(7)
    secret = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(LONG_PATTERN + 200))
    r = Redactor({secret: "[LONG]"})
    assert r.max_pattern_len > LONG_PATTERN
    for form in (secret.encode(), base64.b64encode(secret.encode()), secret.encode().hex().encode()):
        data = b"<" + form + b">"
        assert r.redact(data) == b"<[LONG]>"
        assert stream_all(r, random_chunks(data, rng, 50)) == b"<[LONG]>"


# ---------------------------------------------------------------------------------------------------
# matching rules


def test_prefix_secret_does_not_let_the_longer_one_leak() -> None:
    r = Redactor({"abcd": "[S]", "abcdefgh": "[L]"})
    assert r.redact(b"1abcdefgh2") == b"1[L]2"
    assert r.redact(b"1abcdefg2") == b"1[S]efg2"
    assert r.redact(b"abcdabcdefghabcd") == b"[S][L][S]"
    data = b"xxabcdefghyy"
    for cut in range(len(data) + 1):
        assert stream_all(r, [data[:cut], data[cut:]]) == b"xx[L]yy"
    assert stream_all(r, [bytes([b]) for b in data]) == b"xx[L]yy"


def test_overlapping_secrets_hide_both() -> None:
    r = Redactor({"abcXYZ": "[A]", "XYZdefgh": "[B]"})
    assert r.redact(b"(abcXYZdefgh)") == b"([A])"
    assert r.redact(b"(abcXYZ XYZdefgh)") == b"([A] [B])"


def test_long_patterns_follow_the_same_rules() -> None:
    rng = random.Random(3)
    a = "".join(rng.choice("abcdefghij") for _ in range(LONG_PATTERN + 50))
    b = a[-100:] + "".join(rng.choice("klmnopqrst") for _ in range(LONG_PATTERN))
    r = Redactor({a: "[A]", a + "-and-more": "[A+]", b: "[B]"})
    assert r.redact(f"<{a}-and-more>".encode()) == b"<[A+]>"  # longest wins among long patterns
    assert r.redact(f"<{a}-and-less>".encode()) == b"<[A]-and-less>"
    assert r.redact(f"<{a}{b[100:]}>".encode()) == b"<[A]>"  # overlap: b's tail is hidden too
    assert r.redact(f"<{b}|{a}>".encode()) == b"<[B]|[A]>"
    periodic = "0123456789" * (LONG_PATTERN // 10 + 1)
    r = Redactor({periodic: "[P]"})
    assert r.redact(f"<{periodic}0123456789>".encode()) == b"<[P]>"  # it overlaps itself: one run
    assert r.redact(f"<{periodic}01234567>".encode()) == b"<[P]01234567>"
    assert r.redact(f"<{periodic}|{periodic}>".encode()) == b"<[P]|[P]>"


def test_secret_at_buffer_edges_and_adjacent_repeats() -> None:
    r = Redactor({TOKEN: R})
    t = TOKEN.encode()
    assert r.redact(t) == R.encode()
    assert r.redact(t + t + b"\n" + t) == (R + R + "\n" + R).encode()


def test_multibyte_secret_split_inside_a_character() -> None:
    secret = "пароль-秘密-🔑"
    r = Redactor({secret: "[P]"})
    data = f"ключ: {secret}; ок".encode()
    for cut in range(len(data) + 1):
        assert stream_all(r, [data[:cut], data[cut:]]) == "ключ: [P]; ок".encode()


def test_redact_text_for_command_lines() -> None:
    r = Redactor({TOKEN: R}, extra=["executor-own-token-1234"])
    argv = ["git", "clone", f"https://x:{TOKEN}@example.com/r.git", "--config", "a=executor-own-token-1234"]
    assert [r.redact_text(a) for a in argv] == [
        "git",
        "clone",
        f"https://x:{R}@example.com/r.git",
        "--config",
        f"a={DEFAULT_REPLACEMENT}",
    ]
    assert r.redact_text(f"Basic {base64.b64encode(f'x:{TOKEN}'.encode()).decode()}").count(R) == 1
    assert Redactor({"\ud800lone-surrogate": "[X]"}).redact_text("a \ud800lone-surrogate b") == "a [X] b"


# ---------------------------------------------------------------------------------------------------
# streaming


def test_secret_split_at_every_position_across_two_chunks() -> None:
    r = Redactor({TOKEN: R, WEIRD: W})
    data = f"start {TOKEN} mid {WEIRD} {WEIRD.encode().hex()} end".encode()
    expected = f"start {R} mid {W} {W} end".encode()
    assert r.redact(data) == expected
    for cut in range(len(data) + 1):
        assert stream_all(r, [data[:cut], data[cut:]]) == expected, cut


@pytest.mark.parametrize("with_long", [False, True], ids=["short-patterns", "with-long-pattern"])
def test_secret_fed_one_byte_at_a_time(with_long: bool) -> None:
    secrets = {TOKEN: R} | ({"Q" * (LONG_PATTERN + 1): "[Q]"} if with_long else {})
    r = Redactor(secrets)
    t = TOKEN.encode()
    # the hex form is the longest short pattern: it must be found when it starts right at the cut point
    data = b"a" + t + b"b" + base64.b64encode(t) + b"c" + t.hex().encode() + b"d"
    stream = r.stream()
    out = b""
    for b in data:
        out += stream.feed(bytes([b]))
        assert stream.pending <= r.max_hold
        for form in (t, base64.b64encode(t), t.hex().encode()):
            assert form[:-1] not in out  # no part of a form escapes before the decision
    out += stream.flush()
    assert out == f"a{R}b{R}c{R}d".encode() == r.redact(data)


def test_stream_equals_one_shot_for_random_chunkings() -> None:
    rng = random.Random(20240611)
    long_secret = "L" + "".join(rng.choice("0123456789abcdef") for _ in range(LONG_PATTERN + 40))
    secrets = {TOKEN: R, WEIRD: W, "abcd": "[S]", "abcdefgh": "[L]", "abcXYZ": "[A]", "XYZdefgh": "[B]"}
    secrets[long_secret] = "[LONG]"
    r = Redactor(secrets, extra=["aaaa", "q"])
    pieces = [
        s.encode() for s in (TOKEN, WEIRD, "abcd", "abcdefgh", "abcXYZdefgh", "aaaaaaa", "q", long_secret)
    ]
    pieces += [base64.b64encode(b"x" + TOKEN.encode()), WEIRD.encode().hex().encode(), quote(WEIRD).encode()]
    pieces += [TOKEN.encode().hex().upper().encode()]  # the longest short pattern
    pieces += [p[: len(p) // 2] for p in pieces] + [b"abc", b"XYZ", b" ", b"\n", "é".encode(), b"zz"]
    for case in range(300):
        data = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))
        expected = r.redact(data)
        chunks = random_chunks(data, rng, rng.choice([1, 3, 8, 64, 400]))
        assert stream_all(r, chunks) == expected, (case, data, chunks)
        for literal in (TOKEN.encode(), WEIRD.encode(), b"abcdefgh", long_secret.encode()):
            assert literal not in expected


def naive_redact(table: dict[bytes, bytes], data: bytes) -> bytes:
    """Reference: leftmost-longest, a match overlapping the current run extends it; O(n * patterns)."""
    out, emitted = [], 0
    for i in range(len(data)):
        hits = [p for p in table if data.startswith(p, i)]
        if not hits:
            continue
        stop = i + max(map(len, hits))
        if stop > emitted:
            if i >= emitted:
                out += [data[emitted:i], table[max(hits, key=len)]]
            emitted = stop
    out.append(data[emitted:])
    return b"".join(out)


def _identity_table(r: Redactor) -> dict[bytes, bytes]:
    """The patterns that match output without whitespace, escapes or hex digits as it is (the raw and
    squeezed views are the output itself there; the other views find nothing)."""
    table = dict(r.tables.raw)
    for p, v in r.tables.squeezed.items():
        table.setdefault(p, v)
    return table


def test_one_shot_matches_a_naive_reference() -> None:
    rng = random.Random(99)
    r = Redactor({"ghij": "1", "ghijklmn": "2", "ijXY": "3", "XYZW": "4", "hijklm": "5", "zzzz": "6"})
    table = _identity_table(r)
    alphabet = b"ghijklmnXYZWz"  # no hex digits, no whitespace, no escapes
    for _ in range(400):
        data = bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        assert r.redact(data) == naive_redact(table, data), data

    # long patterns mixed with short ones, self-overlapping too
    long_a, long_b = "gh" * (LONG_PATTERN // 2 + 3), "h" * 10 + "gh" * (LONG_PATTERN // 2)
    r = Redactor({long_a: "L", long_b: "M", "ghgh": "s", "hhhh": "t", "ghhhhhhhhhhhg": "u"})
    table = _identity_table(r)
    fragments = [long_a, long_b, long_a[:-1], long_b[3:], "gh", "h", "ghgh", "hhhhh", "x"]
    for _ in range(100):
        data = "".join(rng.choice(fragments) for _ in range(rng.randint(0, 6))).encode()
        assert r.redact(data) == naive_redact(table, data), data


def test_no_secrets_means_passthrough_without_hold_back() -> None:
    stream = Redactor().stream()
    for chunk in (b"hello ", b"", b"world\n", bytes(range(256))):
        assert stream.feed(chunk) == chunk
        assert stream.pending == 0
    assert stream.flush() == b""


def test_hold_back_does_not_grow_without_matches() -> None:
    r = Redactor({TOKEN: R, WEIRD: W})
    stream = r.stream()
    data = random.Random(1).randbytes(20000)
    out = b""
    for i in range(0, len(data), 100):
        out += stream.feed(data[i : i + 100])
        assert stream.pending <= min(i + 100, r.max_hold)
    assert out + stream.flush() == data


def test_output_that_cannot_start_a_secret_is_not_held_back() -> None:
    stream = Redactor({TOKEN: R}).stream()
    assert stream.feed(b"+ echo running\nrunning\n") == b"+ echo running\nrunning\n"
    assert stream.pending == 0
    head = stream.feed(b"next: " + TOKEN.encode()[:5])
    assert head == b"next: " and stream.pending == 5  # a possible start of the secret waits
    assert stream.feed(TOKEN.encode()[5:] + b"!") == R.encode() + b"!"


def test_flush_returns_the_remainder_and_resets() -> None:
    r = Redactor({TOKEN: R})
    stream = r.stream()
    head = stream.feed(b"ok " + TOKEN.encode()[:10])
    assert TOKEN.encode()[:10] not in head
    assert head + stream.flush() == b"ok " + TOKEN.encode()[:10]  # an unfinished secret is not a secret
    assert stream.pending == 0 and stream.flush() == b""
    assert stream.feed(TOKEN.encode()) + stream.flush() == R.encode()  # reusable after flush
    assert isinstance(stream, StreamRedactor)


def test_large_output_in_small_chunks() -> None:
    """10 MiB in 4 KiB chunks with secrets sprinkled in (fast: no timing assertion)."""
    rng = random.Random(5)
    r = Redactor({TOKEN: R, WEIRD: W}, extra=["executor-own-token-1234"])
    block = bytearray(rng.choice(b"abcdefghijklmnopqrstuvwxyz0123456789 \n") for _ in range(64 * 1024))
    block[1000:1000] = TOKEN.encode()
    block[40000:40000] = base64.b64encode(WEIRD.encode())
    data = bytes(block) * (10 * 1024 * 1024 // len(block))
    stream = r.stream()
    out = [stream.feed(data[i : i + 4096]) for i in range(0, len(data), 4096)]
    out.append(stream.flush())
    result = b"".join(out)
    copies = len(data) // len(block)
    assert result.count(R.encode()) == copies and result.count(W.encode()) == copies
    assert TOKEN.encode() not in result and base64.b64encode(WEIRD.encode())[:-4] not in result
    assert result == r.redact(data)


def test_undecided_tail_matches_a_naive_reference() -> None:
    """The held-back tail is exactly the longest tail that is a proper prefix of some pattern: shorter
    would emit the start of a secret the next chunk completes, longer would only delay output."""
    rng = random.Random(11)
    long_secret = "".join(rng.choice("ab") for _ in range(LONG_PATTERN + 30)).encode()
    token = TOKEN.encode()
    m = Matcher(
        {b"abab-secret": b"1", b"ab": b"2", long_secret: b"3", token: b"4", token.hex().encode(): b"5"}
    )
    patterns, keep = list(m.table), m.max_len - 1

    def naive(buf: bytes) -> int:
        for k in range(min(keep, len(buf)), 0, -1):
            if any(len(p) > k and p.startswith(buf[-k:]) for p in patterns):
                return k
        return 0

    pieces = [b"a", b"b", b"ab", b"abab-s", b"abab-secret", b"-", b"x", long_secret[: rng.randint(1, 280)]]
    pieces += [token[:9], token.hex().encode()[:20]]
    for _ in range(300):
        buf = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 8)))
        assert m.undecided(buf, keep) == naive(buf), buf

    # a long and a short pattern that both continue the same tail, the long one starting a bit earlier
    m = Matcher({b"ababababab-Z": b"s", b"ab" * (LONG_PATTERN // 2 + 10): b"l"})
    patterns, keep = list(m.table), m.max_len - 1
    for _ in range(300):
        buf = b"".join(
            rng.choice([b"a", b"b", b"ab", b"abab", b"-", b"-Z", b"x"]) for _ in range(rng.randint(0, 12))
        )
        assert m.undecided(buf, keep) == naive(buf), buf


# -- many secrets: bounded, built off the event loop, fed in bounded time (issue 9, item 4) ----------


def _random_secrets(n: int, seed: int = 9) -> dict[str, str]:
    rng = random.Random(seed)
    alphabet = string.ascii_letters + string.digits + "-_/+"
    return {"".join(rng.choices(alphabet, k=rng.randint(20, 40))): f"[s{i}]" for i in range(n)}


def test_too_many_values_are_refused_before_anything_is_built() -> None:
    values = _random_secrets(80_000)
    with pytest.raises(
        RedactionLimitError, match="the job has 80000 redacted values; this executor redacts at most 10000"
    ):
        Redactor(values)
    big = {"k" * (MAX_SECRET_BYTES // 2): "r" * (MAX_SECRET_BYTES // 2 + 1)}
    with pytest.raises(RedactionLimitError, match=f"at most {MAX_SECRET_BYTES} bytes"):
        Redactor(big)
    check_limits(_random_secrets(MAX_VALUES))  # at the limit: fine
    Redactor({"é" * 10: "x"}, max_bytes=30)  # 20 bytes + 1
    with pytest.raises(RedactionLimitError):
        Redactor({"é" * 10: "x"}, max_bytes=20)  # bytes, not characters


def test_many_secrets_are_redacted_at_the_limit() -> None:
    # The cost of building and feeding at this size is measured in bench/redact_throughput.py.
    values = _random_secrets(MAX_VALUES)
    r = Redactor(values)
    rng = random.Random(4)
    chunk = base64.b64encode(rng.randbytes(48 * 1024))  # 64 KiB of base64: every byte may start a key
    secret = next(iter(values))
    s = r.stream()
    out = s.feed(chunk[:1000] + secret.encode()[:7]) + s.feed(secret.encode()[7:] + b"\n") + s.flush()
    assert out == chunk[:1000] + values[secret].encode() + b"\n"
    last = list(values)[-1]
    assert r.redact_text(f"a {last} b") == f"a {values[last]} b"


def test_redactor_cache_is_a_bounded_lru() -> None:
    cache = RedactorCache(2)
    a, b, c = Redactor({"aaaa": "1"}), Redactor({"bbbb": "2"}), Redactor({"cccc": "3"})
    cache.put("a", a)
    cache.put("b", b)
    assert cache.get("a") is a  # a is now the most recent
    cache.put("c", c)
    assert (cache.get("a"), cache.get("b"), cache.get("c"), len(cache)) == (a, None, c, 2)
    assert cache_key(1, {"s": "r"}, ["t"]) == cache_key(1, {"s": "r"}, ["t"])
    assert (
        len(
            {
                cache_key(1, {"s": "r"}, ["t"]),
                cache_key(2, {"s": "r"}, ["t"]),
                cache_key(1, {"s": "x"}, ["t"]),
                cache_key(1, {"s": "r"}, ["u"]),
            }
        )
        == 4
    )
    assert "s" not in cache_key(1, {"secret-value": "r"}, []).replace("s", "")  # a hex digest


def _handler() -> JobHandler:
    settings = SimpleNamespace(frontend_password="executor-password", docker_auth_config=None)
    return JobHandler(settings, None, None, None)  # type: ignore[arg-type]


async def _build(handler: JobHandler, job: Job, monkeypatch: pytest.MonkeyPatch) -> tuple[Redactor, set[str]]:
    """The handler's redactor for `job`, and the names of the threads Redactors were built in."""
    import corral.executor.handler as handler_module

    threads: set[str] = set()
    real = Redactor

    def recording(*args: object, **kwargs: object) -> Redactor:
        threads.add(threading.current_thread().name)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(handler_module, "Redactor", recording)
    result = handler._redactor(job)
    redactor = await result if inspect.isawaitable(result) else result
    return redactor, threads


async def test_handler_builds_the_redactor_off_the_loop_and_reuses_it_on_retry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    values = _random_secrets(MAX_VALUES)
    job = Job.model_validate({"id": 7, "token": "job-token-0123", "redactedValues": values})
    handler = _handler()
    # Built in a worker thread: on the loop the whole build stalled it (~8 s at this size).
    redactor, threads = await _build(handler, job, monkeypatch)
    assert threads and threading.main_thread().name not in threads, threads
    secret = next(iter(values))
    assert redactor.redact_text(f"x {secret} job-token-0123") == f"x {values[secret]} ******"
    again, threads = await _build(handler, job.model_copy(update={"attempt": 2}), monkeypatch)
    assert again is redactor and not threads, (
        "a retry of the same job with the same secrets rebuilt its redactor"
    )
    other, _ = await _build(handler, job.model_copy(update={"redacted_values": {"x" * 20: "y"}}), monkeypatch)
    assert other is not redactor and other.redact_text("x" * 20) == "y"


async def test_handler_fails_a_job_with_too_many_values_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import corral.executor.handler as handler_module

    built: list[object] = []
    monkeypatch.setattr(handler_module, "Redactor", lambda *a, **k: built.append(a))
    job = Job.model_validate({"id": 8, "token": "t", "redactedValues": _random_secrets(80_000)})
    with pytest.raises(StepFailed) as caught:
        await _handler()._redactor(job)
    assert caught.value.message == "the job has 80000 redacted values; this executor redacts at most 10000"
    assert built == [], "the limit is checked before anything is built"


def test_public_names_are_complete_and_sorted() -> None:
    import corral.executor.redact as package

    assert package.__all__ == sorted(package.__all__)
    public = {n for n in dir(package) if not n.startswith("_") and not inspect.ismodule(getattr(package, n))}
    assert public - {"annotations"} == set(package.__all__)
