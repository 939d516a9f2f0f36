"""Docker images as VM disks: hostile tar streams never write outside the extraction directory, a
real image (corral/busybox:1) becomes an ext4 disk with its files, modes and owners, and the cache
is bounded (least recently used disks that no VM holds go first)."""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from corral.executor.runtimes.docker.api import DockerAPI, socket_from_env
from corral.executor.runtimes.firecracker.images import ImageDisks, UnsafeImage, safe_extract
from tests.conftest import docker_ok, require


def _tar(tmp: Path, members: list[tuple[tarfile.TarInfo, bytes]]) -> Path:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    path = tmp / f"t{time.monotonic_ns()}.tar"
    path.write_bytes(buf.getvalue())
    return path


def _info(name: str, kind: bytes = tarfile.REGTYPE, link: str = "", mode: int = 0o644) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode, info.uid, info.gid = kind, link, mode, 1234, 4321
    return info


def _dest(tmp: Path) -> Path:
    d = tmp / f"dest{time.monotonic_ns()}"
    d.mkdir()
    return d


@pytest.mark.parametrize(
    "members",
    [
        # a symlink to outside (absolute, relative), then a file "through" it
        [(_info("etc", tarfile.SYMTYPE, "OUTSIDE"), b""), (_info("etc/passwd"), b"pwned")],
        [(_info("x", tarfile.SYMTYPE, "../../outside"), b""), (_info("x/y"), b"pwned")],
        [(_info("../outside/y"), b"pwned")],
        [(_info("a/../../outside/y"), b"pwned")],
        # a hard link to a host file, and one through a symlink
        [(_info("h", tarfile.LNKTYPE, "../outside/secret"), b"")],
        [(_info("l", tarfile.SYMTYPE, "OUTSIDE"), b""), (_info("h", tarfile.LNKTYPE, "l/secret"), b"")],
    ],
)
def test_hostile_entries_are_refused_and_nothing_is_written_outside(tmp_path: Path, members: list) -> None:
    outside = tmp_path / "outside"
    outside.mkdir(exist_ok=True)
    (outside / "secret").write_text("host file")
    for info, _ in members:  # OUTSIDE: the absolute path of the directory that must stay untouched
        info.linkname = info.linkname.replace("OUTSIDE", str(outside))
    dest = _dest(tmp_path)
    with pytest.raises(UnsafeImage):
        safe_extract(_tar(tmp_path, members), dest)
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]
    assert (outside / "secret").read_text() == "host file"
    assert os.stat(outside / "secret").st_nlink == 1


def test_an_absolute_name_lands_inside_and_links_stay_links(tmp_path: Path) -> None:
    dest = _dest(tmp_path)
    members = [
        (_info("/bin", tarfile.DIRTYPE, mode=0o755), b""),
        (_info("/bin/busybox", mode=0o4755), b"ELF..."),
        (_info("bin/sh", tarfile.SYMTYPE, "/bin/busybox"), b""),
        (_info("bin/ash", tarfile.LNKTYPE, "bin/busybox"), b""),
        (_info("dev/null", tarfile.CHRTYPE), b""),
        (_info("fifo", tarfile.FIFOTYPE), b""),
    ]
    assert safe_extract(_tar(tmp_path, members), dest) == len(members)
    assert (dest / "bin" / "busybox").read_bytes() == b"ELF..."
    st = os.stat(dest / "bin" / "busybox")
    assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (0o4755, 1234, 4321)
    assert os.readlink(dest / "bin" / "sh") == "/bin/busybox"  # made as is, never followed
    assert os.lstat(dest / "bin" / "sh").st_uid == 1234
    assert st.st_nlink == 2  # ash
    assert not (dest / "dev" / "null").exists() and not (dest / "fifo").exists()


def test_the_size_bound_is_checked_before_writing_past_it(tmp_path: Path) -> None:
    dest = _dest(tmp_path)
    members = [(_info("a"), b"x" * 600), (_info("b"), b"y" * 600)]
    with pytest.raises(UnsafeImage, match="exceed 1000 bytes"):
        safe_extract(_tar(tmp_path, members), dest, max_bytes=1000)
    assert not (dest / "b").exists()


def test_entries_too_deep_and_an_unpacking_too_long_are_refused(tmp_path: Path) -> None:
    """Each entry is opened component by component (review R2): an image of many deep names cost
    entries x depth system calls on the host, hours for one image within the byte bounds."""
    deep = "/".join(["d"] * 256)
    assert safe_extract(_tar(tmp_path, [(_info(deep), b"ok")]), _dest(tmp_path)) == 1
    with pytest.raises(UnsafeImage, match="more than 256 directories deep"):
        safe_extract(_tar(tmp_path, [(_info(deep + "/d"), b"too deep")]), _dest(tmp_path))
    link = (_info("h", tarfile.LNKTYPE, deep + "/d/x"), b"")  # a hard link's target too
    with pytest.raises(UnsafeImage, match="directories deep"):
        safe_extract(_tar(tmp_path, [link]), _dest(tmp_path))
    many = [(_info(f"f{i}"), b"") for i in range(2048)]  # checked every 1024 entries
    with pytest.raises(UnsafeImage, match="took over 0 s"):
        safe_extract(_tar(tmp_path, many), _dest(tmp_path), max_seconds=0)


async def test_a_job_cancelled_while_its_image_is_converted_is_cancelled_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    """The conversion runs in threads (review R2): a cancel returned at once, and removing the
    temporary directory beside the thread still unpacking into it failed (ENOTEMPTY), which replaced
    the cancellation (the job came out as an executor error) and left the directory for good (its
    pid is alive, so no janitor takes it). Now the threads stop first. No Docker: a made-up export."""
    deep = "/".join(["d"] * 100)  # about 0.6 ms per entry to unpack: seconds in all
    src = _tar(tmp_path, [(_info(f"{deep}/f{i}"), b"") for i in range(8000)])
    cache = tmp_path / "cache"
    disks = ImageDisks(None, cache)  # type: ignore[arg-type]

    async def export(image_id: str, tar: Path) -> None:
        tar.write_bytes(src.read_bytes())

    disks._export = export  # type: ignore[method-assign]
    task = asyncio.create_task(disks.disk("sha256:" + "c" * 64, {}))
    for _ in range(500):  # until the unpacking is under way
        if any((p / "root" / "d").exists() for p in cache.glob(".make-*")):
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.5)  # hundreds of entries in: the removal meets the thread at work
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert list(cache.iterdir()) == []


@pytest.fixture
def api() -> DockerAPI:
    require(docker_ok(), "Docker Engine is not reachable (run scripts/setup.sh)")
    return DockerAPI(socket_from_env())


async def test_a_real_image_becomes_a_cached_ext4_disk_and_the_cache_is_bounded(
    api: DockerAPI, tmp_path: Path
) -> None:
    found = await api.image_inspect("corral/busybox:1")
    require(found is not None, "image corral/busybox:1 is missing (scripts/build-images.sh)")
    assert found is not None
    disks = ImageDisks(api, tmp_path / "cache", max_bytes=1)  # every disk not in use is over the bound
    t = time.monotonic()
    disk = await disks.disk(found["Id"], found)
    first = time.monotonic() - t
    assert "PATH=/bin" in disk.env
    listing = subprocess.run(
        ["debugfs", "-R", "ls -l /bin", str(disk.path)], capture_output=True, text=True, check=True
    ).stdout
    assert " busybox" in listing and " sh" in listing
    # the same image again: the cached disk, no new export (and it is held, so not evicted)
    t = time.monotonic()
    again = await disks.disk(found["Id"], found)
    assert again.path == disk.path and time.monotonic() - t < first
    assert disk.path.exists()
    disks.release(found["Id"])
    disks.release(found["Id"])
    cached = tmp_path / "cache" / f"{found['Id'].removeprefix('sha256:')}.ext4"
    assert not disk.path.exists() and cached.stat().st_nlink == 1  # the held link went with the last user
    assert disks._evict() == [cached.stem]  # nothing holds it now: over the bound, removed
    assert not cached.exists()
    await api.aclose()
