"""The host side of the firecracker runtime's CLI steps (no VM): what the CLI root is made of (its
shares, the executor-made etc/ and files/, the job.sh lines the guest reads), the paths it refuses,
the CLI step's environment, and job.sh's `clistep` line carried intact through a real shell."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from corral.errors import ConfigError
from corral.executor.runtimes.base import JobSpace, Step
from corral.executor.runtimes.firecracker.clistep import CLIROOT_TAG, USR_TAG, CliRoot, CliSteps
from corral.executor.runtimes.firecracker.guestjob import GuestStep, job_script


def test_the_cli_root_shares_usr_the_cli_directories_and_copies_single_files(tmp_path: Path) -> None:
    venv = tmp_path / "opt" / "venv"
    (venv / "lib").mkdir(parents=True)
    tool = tmp_path / "bin-dir" / "src"
    tool.parent.mkdir()
    tool.write_bytes(b"\x7fELF static")
    tool.chmod(0o755)
    (tool.parent / "neighbour-secret").write_text("not for steps")
    root = CliRoot.build(tmp_path / "state", [str(venv), str(venv / "lib"), str(tool), "/usr/lib/python3"])
    tags = {s.tag: s for s in root.shares}
    assert tags[USR_TAG].path == Path("/usr") and tags[USR_TAG].readonly
    assert tags[CLIROOT_TAG].path == tmp_path / "state" and tags[CLIROOT_TAG].readonly
    # the venv once (its lib inside it is visible through it), nothing under /usr again
    assert [s.path for s in root.shares if s.tag.startswith("cli") and s.tag != CLIROOT_TAG] == [venv]
    assert all(s.readonly for s in root.shares)
    # the single file is a copy in the executor's share, never its directory
    assert (tmp_path / "state" / "files" / "0").read_bytes() == b"\x7fELF static"
    assert os.stat(tmp_path / "state" / "files" / "0").st_mode & 0o777 == 0o755
    assert not any(s.path == tool.parent for s in root.shares)
    assert "cli_share usr /usr" in root.preamble
    assert f"cli_share cli0 {venv}" in root.preamble
    assert f"cli_file 0 {tool}" in root.preamble
    if os.path.islink("/bin"):
        assert f"cli_link /bin {os.readlink('/bin')}" in root.preamble


def test_the_cli_roots_etc_holds_no_host_secret_and_no_host_accounts(tmp_path: Path) -> None:
    CliRoot.build(tmp_path / "state", [])
    etc = tmp_path / "state" / "etc"
    names = set(os.listdir(etc))
    assert "shadow" not in names and "gshadow" not in names and "sudoers" not in names
    assert (etc / "passwd").read_text() == "" and (etc / "group").read_text() == ""  # the guest's
    assert (etc / "resolv.conf").is_file()  # a networked job's resolver is bound over it
    assert "localhost" in (etc / "hosts").read_text()
    assert "passwd: files" in (etc / "nsswitch.conf").read_text()
    assert sorted(os.listdir(etc / "ssl")) == sorted(
        n for n in ("certs", "openssl.cnf") if os.path.exists(f"/etc/ssl/{n}")
    )  # never /etc/ssl/private
    if os.path.exists("/etc/ssl/certs/ca-certificates.crt"):
        assert (etc / "ssl" / "certs" / "ca-certificates.crt").read_bytes() == Path(
            "/etc/ssl/certs/ca-certificates.crt"
        ).read_bytes()
    # made afresh: what the last build left is gone
    (etc / "stale").write_text("x")
    CliRoot.build(tmp_path / "state", [])
    assert not (etc / "stale").exists()


@pytest.mark.parametrize("path", ["/data/cli", "/proc/x", "/etc/corral", "/sys/x", "/opt/with space"])
def test_a_cli_path_the_guest_root_cannot_take_is_a_config_error(tmp_path: Path, path: str) -> None:
    with pytest.raises(ConfigError, match=path.split("/")[1]):
        CliSteps([path], tmp_path / "state")  # at the executor's start, before any job
    with pytest.raises(ConfigError, match=path.split("/")[1]):
        CliRoot.build(tmp_path / "state", [path])


def test_a_cli_steps_environment_is_the_sandboxs_and_the_steps_own(tmp_path: Path) -> None:
    space = JobSpace(job_id=1, queue="q", root=tmp_path, workspace=tmp_path / "ws", uid=4321, gid=4321)
    env = {"X": "1", "HOME": "/h"}
    step = Step("step.src.0", "cli", 2, None, ("/opt/corral", "version"), dir="sub", env=env)
    guest = CliSteps.guest_step(2, space, step)
    assert guest.kind == "cli" and guest.image == "" and (guest.uid, guest.gid) == (4321, 4321)
    assert dict(guest.env) == {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": "/h",
        "USER": "job",
        "PWD": "/data/sub",
        "X": "1",
    }


def test_job_sh_carries_a_cli_step_without_an_image_after_the_preamble() -> None:
    steps = [
        GuestStep(0, "img0", ["/bin/sh", "-c", "true"]),
        GuestStep(
            1, "", ["/opt/c li", "a b", "$(reboot)"], uid=7, gid=8, dir="d", env={"E": "v w"}, kind="cli"
        ),
    ]
    script = job_script(steps, ["cli_share usr /usr"])
    lines = script.splitlines()
    assert lines[1] == "cli_share usr /usr"
    assert lines[2].startswith("step 0 img0 ")
    assert lines[3].startswith("clistep 1 7 8 d ")
    shown = subprocess.run(
        ["sh", "-c", 'clistep() { for w in "$@"; do printf "[%s]" "$w"; done; }; ' + lines[3]],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert shown == "[1][7][8][d][E=v w][/opt/c li][a b][$(reboot)]"
    with pytest.raises(ValueError, match="kind"):
        job_script([GuestStep(0, "", ["x"], kind="shell")])
