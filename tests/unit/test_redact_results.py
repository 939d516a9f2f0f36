"""The diff and the outputs a job uploads, redacted (corral.executor.redact.results): against real git
diffs (text, wrapped base64 over added lines, binary literal and delta hunks), checked with real
`git apply`, and a property test: a secret form written into a file anywhere, at any wrap, never
survives in the diff, and the redacted diff still applies when only added lines held it."""

from __future__ import annotations

import base64
import os
import subprocess
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from corral.executor.redact import Redactor
from corral.executor.redact.results import describe, redact_diff, redact_files, redact_results
from tests.unit.redact_kit import REPLACEMENT, leaks, wrapped

SECRET = "sgp_0123456789abcdef0123456789abcdef01234567"
R = Redactor({SECRET: REPLACEMENT})
GIT_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.invalid",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.invalid",
    "HOME": "/nonexistent",
    "GIT_CONFIG_NOSYSTEM": "1",
    "PATH": os.environ["PATH"],
}


def git(repo: Path, *args: str, stdin: bytes | None = None) -> bytes:
    return subprocess.run(
        ["git", "-C", str(repo), *args], env=GIT_ENV, input=stdin, capture_output=True, check=True
    ).stdout


def repo_with(tmp: Path, base: dict[str, bytes]) -> Path:
    repo = tmp / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    for name, content in base.items():
        (repo / name).write_bytes(content)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "--allow-empty", "-m", "base")
    return repo


def diff_of(repo: Path, change: dict[str, bytes]) -> str:
    for name, content in change.items():
        (repo / name).write_bytes(content)
    git(repo, "add", "-A")
    return git(repo, "diff", "--cached", "--binary", "--no-color", "HEAD").decode("utf-8", "replace")


def applies(tmp: Path, repo: Path, diff: str) -> bool:
    """Whether `diff` applies to a clone of the base commit."""
    try:
        apply_to_base(tmp, repo, diff)
    except subprocess.CalledProcessError:
        return False
    return True


def apply_to_base(tmp: Path, repo: Path, diff: str) -> Path:
    """A clone of the base commit with `diff` applied (raises when it does not apply)."""
    out = Path(tempfile.mkdtemp(dir=tmp))
    subprocess.run(
        ["git", "clone", "-q", "--no-local", str(repo), str(out)],
        env=GIT_ENV,
        check=True,
        capture_output=True,
    )
    git(out, "apply", "--binary", "-", stdin=diff.encode())
    return out


def test_added_lines_are_redacted_and_the_patch_still_applies(tmp_path: Path) -> None:
    repo = repo_with(tmp_path, {"a.txt": b"one\ntwo\n"})
    blob = wrapped(base64.b64encode(b"user:" + SECRET.encode()), 20).decode()
    diff = diff_of(repo, {"a.txt": f"one\ntoken={SECRET}\n{blob}\ntwo\n".encode()})
    redacted, places = redact_diff(R, diff)
    assert places == 2, redacted
    assert not leaks(SECRET, redacted.encode()), redacted
    assert len(redacted.splitlines()) == len(diff.splitlines())  # hunk headers stay right
    applied = apply_to_base(tmp_path, repo, redacted)
    text = (applied / "a.txt").read_text()
    assert text.startswith(f"one\ntoken={REPLACEMENT}\n"), text
    assert not leaks(SECRET, text.encode()), text


def test_a_redacted_context_line_is_redacted_and_its_hunk_no_longer_applies(tmp_path: Path) -> None:
    repo = repo_with(tmp_path, {"a.txt": f"key {SECRET}\nold\n".encode()})
    diff = diff_of(repo, {"a.txt": f"key {SECRET}\nnew\n".encode()})
    assert applies(tmp_path, repo, diff)
    redacted, places = redact_diff(R, diff)
    assert places >= 1 and SECRET not in redacted, redacted
    assert f" key {REPLACEMENT}\n" in redacted, redacted
    assert not applies(tmp_path, repo, redacted)  # the documented cost: the context no longer matches


def test_a_binary_literal_is_redacted_and_applies(tmp_path: Path) -> None:
    repo = repo_with(tmp_path, {"keep.txt": b"x\n"})
    content = b"\0\1\2binary " + SECRET.encode() + b" \xff\xfe" * 50
    diff = diff_of(repo, {"store.bin": content})
    assert "GIT binary patch" in diff and SECRET not in diff  # deflated: not in the text
    redacted, places = redact_diff(R, diff)
    assert places == 1, redacted
    applied = apply_to_base(tmp_path, repo, redacted)
    assert (applied / "store.bin").read_bytes() == content.replace(SECRET.encode(), REPLACEMENT.encode())


def test_a_binary_delta_has_its_inserted_secret_masked(tmp_path: Path) -> None:
    before = bytes(range(256)) * 64  # a big binary file, so git writes a delta for a small change
    repo = repo_with(tmp_path, {"store.bin": before})
    after = before[:5000] + SECRET.encode() + before[5000:]
    diff = diff_of(repo, {"store.bin": after})
    assert "delta " in diff, diff[:400]
    redacted, places = redact_diff(R, diff)
    assert places == 1, redacted
    # The masked delta is well formed, but its result is not the blob the index line names (which the
    # producer's repository does not have), so git refuses it: the documented cost.
    assert not applies(tmp_path, repo, redacted)
    assert applies(tmp_path, repo, diff)
    assert redact_diff(R, redacted) == (redacted, 0)


def test_outputs_are_redacted_as_bytes_and_described() -> None:
    files = {
        "out/a.txt": base64.b64encode(f"t={SECRET}".encode()).decode(),
        "out/b.bin": base64.b64encode(b"\0\xff" + SECRET.encode().hex().encode()).decode(),
        "out/clean": base64.b64encode(b"nothing").decode(),
    }
    new, changed = redact_files(R, files)
    assert changed == ("out/a.txt", "out/b.bin")
    assert base64.b64decode(new["out/a.txt"]) == f"t={REPLACEMENT}".encode()
    assert not leaks(SECRET, base64.b64decode(new["out/b.bin"]))
    assert new["out/clean"] == files["out/clean"]
    note = describe(redact_results(R, "", files))
    assert "out/a.txt, out/b.bin" in note and "diff" not in note, note
    assert describe(redact_results(R, "", {"x": files["out/clean"]})) == ""


def test_no_secrets_change_nothing(tmp_path: Path) -> None:
    repo = repo_with(tmp_path, {"a.txt": b"a\n"})
    diff = diff_of(repo, {"a.txt": b"b\n", "c.bin": b"\0" * 10})
    assert redact_diff(Redactor({}), diff) == (diff, 0)
    assert redact_diff(R, diff) == (diff, 0)


# -- property: the diff's own splitting (hunk prefixes, lines) never lets a form through -------------------

FILLER = st.text(st.sampled_from("abcxyz0189 :=,._-"), max_size=60)


@settings(
    max_examples=int(os.environ.get("CORRAL_HYPOTHESIS_EXAMPLES", "40")),
    database=None,
    deadline=None,
    derandomize=os.environ.get("CI") == "true",
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    before=st.lists(FILLER, max_size=4),
    after=st.lists(FILLER, max_size=4),
    form=st.sampled_from(["plain", "upper", "base64", "hex"]),
    width=st.integers(min_value=8, max_value=80),
    changed_top=st.booleans(),
)
def test_property_no_form_survives_in_the_diff(
    before: list[str], after: list[str], form: str, width: int, changed_top: bool
) -> None:
    encoded = {
        "plain": SECRET.encode(),
        "upper": SECRET.upper().encode(),
        "base64": wrapped(base64.b64encode(b"u:" + SECRET.encode()), width),
        "hex": SECRET.encode().hex().encode(),
    }[form]
    with tempfile.TemporaryDirectory() as tmp:
        base = "\n".join(["top", *before, "bottom"]).encode() + b"\n"
        repo = repo_with(Path(tmp), {"f.txt": base})
        lines = base.split(b"\n")
        lines.insert(1 + len(before) // 2, encoded)
        if changed_top:  # a second change, so the hunk has context on both sides of the secret
            lines.insert(0, b"changed")
        new = b"\n".join(lines[:-1]) + b"\n" + "\n".join(after).encode() + b"\n"
        diff = diff_of(repo, {"f.txt": new})
        redacted, places = redact_diff(R, diff)
        assert places >= 1
        assert not leaks(SECRET, redacted.encode()), redacted
        assert len(redacted.splitlines()) == len(diff.splitlines())
        applied = apply_to_base(Path(tmp), repo, redacted)  # only added lines held it: applies
        assert not leaks(SECRET, (applied / "f.txt").read_bytes())


UTF16 = {
    "le.txt": SECRET.encode("utf-16-le"),
    "be.txt": SECRET.encode("utf-16-be"),
    "bom.txt": SECRET.encode("utf-16"),  # BOM, then the machine's order
    "bombe.txt": b"\xfe\xff" + ("key=" + SECRET + "\n").encode("utf-16-be"),
}


def test_utf16_in_binary_hunks_is_redacted_and_applies(tmp_path: Path) -> None:
    repo = repo_with(tmp_path, {"keep.txt": b"x\n"})
    diff = diff_of(repo, UTF16)
    assert diff.count("GIT binary patch") == len(UTF16), diff  # git takes UTF-16 (NULs) for binary
    redacted, places = redact_diff(R, diff)
    assert places == len(UTF16), redacted
    applied = apply_to_base(tmp_path, repo, redacted)
    for name, content in UTF16.items():
        got = (applied / name).read_bytes()
        assert got != content and REPLACEMENT.encode() in got, (name, got)
        assert SECRET.encode() not in got.replace(b"\0", b""), (name, got)


def test_utf16_outputs_are_redacted() -> None:
    files = {name: base64.b64encode(content).decode() for name, content in UTF16.items()}
    new, changed = redact_files(R, files)
    assert changed == tuple(UTF16), changed
    for name in UTF16:
        got = base64.b64decode(new[name])
        assert SECRET.encode() not in got.replace(b"\0", b""), (name, got)
