"""The guest's step starter (runtimes/firecracker/guest/step.c) on the host, without a VM: built as
the install builds it (and with -Werror and more warnings, so CI sees a new warning first), then run
as init runs it, the background child of a busybox shell holding a directory open, in a scratch
root under a mount namespace of its own. The VM tests check the same from inside a guest
(tests/integration/test_firecracker_vm.py); these check the edges cheaply: uid 0, inherited
descriptors and ignored signals, the exit statuses."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from corral.executor.runtimes.firecracker import assets
from tests.conftest import require

STATUS_KEYS = ("Uid", "Gid", "Groups", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs")


@pytest.fixture(scope="module")
def starter(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require(os.geteuid() == 0, "root is needed to chroot")
    require(os.path.exists(assets.GCC) and os.path.exists(assets.LIBC_A), "gcc and libc6-dev")
    require(shutil.which("unshare") is not None and os.path.exists(assets.BUSYBOX), "util-linux, busybox")
    path = tmp_path_factory.mktemp("starter") / "step"
    path.write_bytes(assets.build_step(("-Werror", "-Wformat=2", "-Wshadow", "-Wcast-qual")))
    path.chmod(0o755)
    return path


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    for d in ("bin", "proc", "data/sub"):
        (r / d).mkdir(parents=True)
    shutil.copy(assets.BUSYBOX, r / "bin" / "busybox")
    (r / "bin" / "sh").symlink_to("busybox")
    os.chown(r / "data" / "sub", 4242, 4242)
    return r


def run(starter: Path, root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The starter as init's shell runs it: `{ exec step ...; } &`, with a directory open as fd 7."""
    words = " ".join(shlex.quote(a) for a in (str(starter), str(root), *args))
    inner = f"exec 7</; {{ exec {words}; }} & wait $!"
    script = f"mount -t proc proc '{root}/proc' && exec {assets.BUSYBOX} sh -c \"$0\""
    return subprocess.run(
        ["unshare", "-m", "--propagation", "private", assets.BUSYBOX, "sh", "-c", script, inner],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_step_holds_no_privilege_no_descriptor_and_no_ignored_signal(starter: Path, root: Path) -> None:
    probe = (
        "grep -E '^(Uid|Gid|Groups|Cap(Inh|Prm|Eff|Bnd|Amb)|NoNewPrivs|SigIgn|SigBlk):' /proc/self/status;"
        " tr '\\0' '\\n' < /proc/$$/environ | sed 's/^/env /';"
        " ls /proc/$$/fd | sed 's/^/fd /'; echo cwd $(pwd -P)"
    )
    p = run(starter, root, "4242", "4243", "sub", "PATH=/bin", "A=x=y", "sh", "-c", probe)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    held = {k: v.strip() for k, _, v in (line.partition(":") for line in lines if ":" in line)}
    assert held["Uid"].split() == ["4242"] * 4 and held["Gid"].split() == ["4243"] * 4, held
    assert held["Groups"] == "" and held["NoNewPrivs"] == "1", held
    assert all(held[k] == "0" * 16 for k in STATUS_KEYS[3:8]), held
    # the shell that started it ignores SIGINT and SIGQUIT for its background child: not the step
    assert held["SigIgn"] == "0" * 16 and held["SigBlk"] == "0" * 16, held
    assert sorted(line for line in lines if line.startswith("env ")) == ["env A=x=y", "env PATH=/bin"]
    assert sorted(line for line in lines if line.startswith("fd ")) == ["fd 0", "fd 1", "fd 2"], lines
    assert "cwd /data/sub" in lines


@pytest.mark.parametrize(
    ("args", "status", "words"),
    [
        (("0", "0", "", "PATH=/bin", "sh", "-c", "id"), 125, "never runs as uid 0"),
        (("4242", "4242", "nope", "PATH=/bin", "true"), 126, "cannot enter /data/nope"),
        (("4242", "4242", "", "PATH=/bin", "no-such-command"), 127, "cannot execute no-such-command"),
        (("4242", "4242", "", "PATH=/bin", "/data"), 126, "cannot execute /data"),
        (("x", "4242", "", "PATH=/bin", "true"), 125, "bad uid 'x'"),
        (("4242", "-1", "", "PATH=/bin", "true"), 125, "bad gid '-1'"),
        (("4242", "4242", "", "PATH=/bin", "A=1"), 125, "no command"),
    ],
)
def test_what_the_starter_refuses_and_its_exit_status(
    starter: Path, root: Path, args: tuple[str, ...], status: int, words: str
) -> None:
    p = run(starter, root, *args)
    assert p.returncode == status and words in p.stderr, (p.returncode, p.stderr)
    assert "uid=0" not in p.stdout
