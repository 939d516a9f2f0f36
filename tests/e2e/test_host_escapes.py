"""The host-side escapes of issue 9, performed for real against a real server and real executors.

Each test is the attack as a hostile repository or step would make it: committed symlinks that aim the
executor's own writes at host paths, a step that swaps its repository for a symlink before the diff,
outputs and diffs sized to exhaust the executor's memory, and a job that fills the host's disk. The
executor runs as root, so every one of these reached the host before the fix.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import bwrap_ok, require
from tests.e2e.kit import (
    GIT_ENV,
    Server,
    logs_text,
    make_repo,
    start_executor,
    wait_job,
)

TOPSECRET = "TOPSECRET-host-file-7f3a"


@pytest.fixture
def host_secret(tmp_path: Path) -> Path:
    """A root-only host directory holding a secret file, as /root/.ssh or the server's data dir."""
    d = tmp_path / "host-private"
    d.mkdir(mode=0o700)
    (d / "secret.txt").write_text(TOPSECRET + "\n")
    os.chmod(d / "secret.txt", 0o600)
    return d


def commit_symlinks(root: Path, files: dict[str, str], links: dict[str, str]) -> None:
    """A repository whose commit holds these files and these symlinks (path -> target)."""
    make_repo(root, files)
    for path, target in links.items():
        p = root / path
        p.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, p)
    subprocess.run(["git", "add", "-A"], cwd=root, env=GIT_ENV, check=True)
    subprocess.run(["git", "commit", "-qm", "links"], cwd=root, env=GIT_ENV, check=True)


def vm_hwm_kib(pid: int) -> int:
    """Peak resident memory of a process (VmHWM), KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmHWM for pid {pid}")


def test_committed_symlinks_never_redirect_the_step_scripts(
    server: Server, runtime: str, tmp_path: Path, host_secret: Path
):
    """`.corral -> <host dir>` and `.corral/step-0.sh -> <host file>`: the old executor wrote the job's
    commands there as root (a root-only directory received PWNED-step0.sh)."""
    victim_file = tmp_path / "authorized_keys"
    victim_file.write_text("ssh-ed25519 AAAA original\n")
    commit_symlinks(
        tmp_path / "src",
        {"README.md": "hi\n"},
        {
            ".corral": str(host_secret),
            ".corral-steps": str(host_secret),
            "sub/.corral": str(host_secret),
            "step-0.sh": str(victim_file),
        },
    )
    server.client.add_repo("acme/links", str(tmp_path / "src"))
    start_executor(server, tmp_path, runtime, EXECUTOR_VM_PREFIX=f"esc-{os.getpid()}-1")
    job = server.client.submit(
        "batches",
        {
            "repositoryName": "acme/links",
            "dockerSteps": [{"image": "corral/busybox:1", "commands": ["echo PWNED-marker", "ls -la /data"]}],
        },
    )
    done = wait_job(server, job["id"])
    assert done["state"] == "completed", done
    assert "PWNED-marker" in logs_text(server, job["id"])  # the step ran from its real script
    assert sorted(os.listdir(host_secret)) == ["secret.txt"]
    assert victim_file.read_text() == "ssh-ed25519 AAAA original\n"


def test_producer_files_through_a_committed_symlink_fail_the_job_and_write_nothing(
    server: Server, runtime: str, tmp_path: Path, host_secret: Path
):
    commit_symlinks(tmp_path / "src", {"README.md": "hi\n"}, {"conf": str(host_secret)})
    server.client.add_repo("acme/links", str(tmp_path / "src"))
    start_executor(server, tmp_path, runtime, EXECUTOR_VM_PREFIX=f"esc-{os.getpid()}-2")
    job = server.client.submit(
        "batches",
        {
            "repositoryName": "acme/links",
            "files": {"conf/evil.sh": {"content": "echo pwned"}},
            "dockerSteps": [{"image": "corral/busybox:1", "commands": ["true"]}],
        },
    )
    done = wait_job(server, job["id"])
    assert done["state"] == "failed", done
    assert "symlink" in done["error"] and "conf" in done["error"], done["error"]
    assert sorted(os.listdir(host_secret)) == ["secret.txt"]


@pytest.mark.parametrize(
    "swap",
    [
        # the step replaces a directory of the repository with a link to a host directory
        "rm -rf src && ln -s {secret} src",
        # ... or the whole repository directory
        "cd /data && rm -rf repo && ln -s {secret} repo",
        # ... or a file with a link to a host file
        "rm -f README.md && ln -s {secret}/secret.txt README.md",
    ],
)
def test_a_step_that_swaps_its_repository_for_a_symlink_never_leaks_host_files_into_the_diff(
    server: Server, runtime: str, tmp_path: Path, host_secret: Path, swap: str
):
    make_repo(tmp_path / "src", {"README.md": "hi\n", "src/app.txt": "one\n"})
    server.client.add_repo("acme/app", str(tmp_path / "src"))
    start_executor(server, tmp_path, runtime, EXECUTOR_VM_PREFIX=f"esc-{os.getpid()}-3")
    job = server.client.submit(
        "batches",
        {
            "repositoryName": "acme/app",
            "repositoryDirectory": "repo",
            "dockerSteps": [
                {"image": "corral/busybox:1", "commands": [swap.format(secret=host_secret)], "dir": "repo"}
            ],
        },
    )
    done = wait_job(server, job["id"])
    result = server.client.result(job["id"])
    assert TOPSECRET not in result["diff"]
    assert TOPSECRET not in logs_text(server, job["id"])
    assert TOPSECRET not in str(done)
    if "README.md" in swap:  # the diff shows the link itself, as git records it
        assert done["state"] == "completed", done
        assert f"+{host_secret}/secret.txt" in result["diff"]


def test_outputs_cannot_exhaust_the_executors_memory(server: Server, runtime: str, tmp_path: Path):
    """24 sparse 16 MiB output files took the old executor from 50 MiB to 2 GiB RSS, and the job was
    reported complete although the upload was refused."""
    make_repo(tmp_path / "src", {"README.md": "hi\n"})
    server.client.add_repo("acme/app", str(tmp_path / "src"))
    executor = start_executor(server, tmp_path, runtime, EXECUTOR_VM_PREFIX=f"esc-{os.getpid()}-4")
    names = [f"out/{i}.bin" for i in range(24)]
    job = server.client.submit(
        "batches",
        {
            "repositoryName": "acme/app",
            "outputs": names,
            "dockerSteps": [
                {
                    "image": "corral/busybox:1",
                    "commands": ["mkdir -p out", "for i in $(seq 0 23); do truncate -s 16M out/$i.bin; done"],
                }
            ],
        },
    )
    done = wait_job(server, job["id"])
    peak_mib = vm_hwm_kib(executor.pid) / 1024
    print(f"executor peak RSS {peak_mib:.0f} MiB; job {done['state']}: {done.get('error')}")
    assert done["state"] == "failed", done
    assert "outputs together exceed" in done["error"], done["error"]
    assert peak_mib < 250, f"executor peaked at {peak_mib:.0f} MiB"


def test_a_huge_diff_fails_the_job_without_buffering_it_on_the_host(
    server: Server, runtime: str, tmp_path: Path
):
    """A 200 MB file took the old executor to 518 MB and git to 404 MB outside any cgroup."""
    make_repo(tmp_path / "src", {"README.md": "hi\n"})
    server.client.add_repo("acme/app", str(tmp_path / "src"))
    executor = start_executor(server, tmp_path, runtime, EXECUTOR_VM_PREFIX=f"esc-{os.getpid()}-5")
    job = server.client.submit(
        "batches",
        {
            "repositoryName": "acme/app",
            "dockerSteps": [
                {"image": "corral/busybox:1", "commands": ["head -c 48000000 /dev/urandom > big"]}
            ],
        },
    )
    done = wait_job(server, job["id"], timeout=120)
    peak_mib = vm_hwm_kib(executor.pid) / 1024
    print(f"executor peak RSS {peak_mib:.0f} MiB; job {done['state']}: {done.get('error')}")
    assert done["state"] == "failed", done
    assert "the diff is larger than the limit" in done["error"], done["error"]
    assert peak_mib < 200, f"executor peaked at {peak_mib:.0f} MiB"


def test_the_workspace_has_a_disk_quota(server: Server, runtime: str, tmp_path: Path):
    """A job wrote 1-1.5 GB to the host disk; with EXECUTOR_JOB_DISK_SPACE=64M it gets ENOSPC."""
    make_repo(tmp_path / "src", {"README.md": "hi\n"})
    server.client.add_repo("acme/app", str(tmp_path / "src"))
    start_executor(
        server,
        tmp_path,
        runtime,
        EXECUTOR_JOB_DISK_SPACE="64M",
        EXECUTOR_KEEP_WORKSPACES="false",
        EXECUTOR_VM_PREFIX=f"esc-{os.getpid()}-6",
    )
    free_before = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    job = server.client.submit(
        "batches",
        {
            "repositoryName": "acme/app",
            "failFast": False,  # dd fails (no space); the next commands report what it saw
            "dockerSteps": [
                {
                    "image": "corral/busybox:1",
                    "commands": [
                        "dd if=/dev/zero of=/data/fill bs=1M count=300",
                        "echo rc=$?",
                        "df -k /data",
                    ],
                }
            ],
        },
    )
    done = wait_job(server, job["id"], timeout=120)
    text = logs_text(server, job["id"])
    assert "No space left on device" in text, text[-2000:]
    assert "rc=1" in text
    assert done["state"] == "completed", done  # set +e: the step goes on; the disk did not grow
    free_after = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    assert free_before - free_after < 100 * 1024**2
    # nothing stays mounted once the job is done
    deadline = time.monotonic() + 10
    while str(tmp_path / "ws") in Path("/proc/self/mounts").read_text():
        assert time.monotonic() < deadline, "the workspace filesystem is still mounted"
        time.sleep(0.1)


def test_a_killed_executors_workspace_filesystems_are_removed_by_the_next_one(server: Server, tmp_path: Path):
    require(bwrap_ok(), "bubblewrap, cgroup v1 and root are needed for the shell runtime")
    make_repo(tmp_path / "src", {"README.md": "hi\n"})
    server.client.add_repo("acme/app", str(tmp_path / "src"))
    prefix = f"esc-{os.getpid()}-8"
    first = start_executor(
        server, tmp_path, "shell", EXECUTOR_VM_PREFIX=prefix, EXECUTOR_JOB_DISK_SPACE="32M"
    )
    job = server.client.submit(
        "batches",
        {
            "repositoryName": "acme/app",
            "dockerSteps": [{"image": "x", "commands": ["echo started", "sleep 60"]}],
        },
    )
    deadline = time.monotonic() + 30
    while "started" not in logs_text(server, job["id"]):
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.1)
    first.kill()
    first.wait()
    ws_root = tmp_path / "ws"
    assert str(ws_root) in Path("/proc/self/mounts").read_text()
    server.client.cancel(job["id"])
    start_executor(server, tmp_path, "shell", EXECUTOR_VM_PREFIX=prefix)
    deadline = time.monotonic() + 30
    while str(ws_root) in Path("/proc/self/mounts").read_text() or any(ws_root.iterdir()):
        assert time.monotonic() < deadline, f"left behind: {list(ws_root.iterdir())}"
        time.sleep(0.2)


def test_a_step_dir_through_a_proc_fd_symlink_stays_in_the_sandbox(server: Server, tmp_path: Path):
    """`dir` naming a committed link to /proc/self/fd/N: bwrap entered it as root while it still held a
    descriptor of the host's /proc, so the step's cwd was on the host and `../..` was the host's /."""
    require(bwrap_ok(), "bubblewrap, cgroup v1 and root are needed for the shell runtime")
    # World-readable and -writable host paths (the job's uid could use them on the host).
    victim = Path(tempfile.mkdtemp(prefix="corral-victim-", dir="/tmp"))
    os.chmod(victim, 0o777)
    (victim / "secret.txt").write_text(TOPSECRET + "\n")
    os.chmod(victim / "secret.txt", 0o644)
    marker = victim / "escaped"
    try:
        _proc_fd_jobs(server, tmp_path, victim, marker)
    finally:
        shutil.rmtree(victim, ignore_errors=True)


def _proc_fd_jobs(server: Server, tmp_path: Path, victim: Path, marker: Path) -> None:
    commit_symlinks(
        tmp_path / "src", {"README.md": "hi\n"}, {f"sub{n}": f"/proc/self/fd/{n}" for n in range(3, 9)}
    )
    server.client.add_repo("acme/cwd", str(tmp_path / "src"))
    start_executor(server, tmp_path, "shell", EXECUTOR_VM_PREFIX=f"esc-{os.getpid()}-9")
    for n in range(3, 9):
        job = server.client.submit(
            "batches",
            {
                "repositoryName": "acme/cwd",
                "dockerSteps": [
                    {
                        "image": "x",
                        "dir": f"sub{n}",
                        "commands": [f"cat ../..{victim}/secret.txt", f"echo ESCAPED > ../..{marker}"],
                    }
                ],
            },
        )
        wait_job(server, job["id"])
        assert TOPSECRET not in logs_text(server, job["id"])
        assert not marker.exists(), logs_text(server, job["id"])


def test_secrets_in_step_keys_and_failure_messages_never_reach_a_producer_view(
    server: Server, tmp_path: Path
):
    require(bwrap_ok(), "bubblewrap, cgroup v1 and root are needed for the shell runtime")
    secret = "SEKRETvalue-9c1e7f"
    start_executor(server, tmp_path, "shell", EXECUTOR_VM_PREFIX=f"esc-{os.getpid()}-10")
    job = server.client.submit(
        "batches",
        {
            "redactedValues": {secret: "[R]"},
            "dockerSteps": [{"key": secret, "image": f"corral/busybox:{secret}", "commands": ["exit 3"]}],
        },
    )
    done = wait_job(server, job["id"])
    assert done["state"] == "failed"
    assert done["error"] == "step.docker.[R] failed with exit code 3", done["error"]
    views = [str(server.client.logs(job["id"])), str(server.client.get(job["id"])), str(server.client.list())]
    views.append("".join(str(ev) for ev in server.client.stream_logs(job["id"])))
    for view in views:
        assert secret not in view, view
