"""Lay out the root filesystem of the `corral/corral:1` image from this machine's own files: no registry.

Run with the project's venv (its interpreter is the one the image gets, its site-packages hold
corral's runtime dependencies):

    .venv/bin/python scripts/corral-image.py digest          # what the image is built from (a hash)
    .venv/bin/python scripts/corral-image.py rootfs DIR      # write the tree into the empty DIR

The tree: busybox (/bin), bash, git with its helpers (/usr/bin/git, /usr/lib/git-core, templates),
CPython 3.11 and its standard library (/usr/local/bin/python3.11, /usr/local/lib/python3.11, minus
tests, IDLE, tkinter, ensurepip), corral and ONLY its runtime dependencies (the closure of corral's
`Requires-Dist` without extras, from the venv's metadata: pytest, mypy, ruff and the rest of the test
tools stay out) in /opt/corral/lib, every shared library those binaries need (found with ldd, kept
at their paths, an ld.so.cache made by ldconfig -r), the CA bundle, and /etc/passwd with uid 1000.
scripts/build-images.sh imports the tree with `docker import` and labels the image with `digest`,
so it is rebuilt exactly when corral's sources, a dependency, the interpreter or git change.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import os
import re
import shutil
import stat
import subprocess
import sys
import sysconfig
from collections.abc import Iterable, Iterator
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "corral"
PY = f"python{sys.version_info.major}.{sys.version_info.minor}"
SITE = "opt/corral/lib"  # PYTHONPATH of the image
PY_PREFIX = "usr/local"
STDLIB_SKIP = {
    *("site-packages", "dist-packages", "test", "idlelib", "tkinter", "turtledemo", "ensurepip"),
    *("lib2to3", "__phello__"),
}
STDLIB_SKIP_RE = re.compile(r"^config-\d")  # the static library and Makefile for building extensions
GIT_CORE = Path("/usr/lib/git-core")
GIT_TEMPLATES = Path("/usr/share/git-core/templates")
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
BUSYBOX = Path("/bin/busybox")
PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\njob:x:1000:1000:job:/tmp:/bin/sh\n"
)
GROUP = "root:x:0:\nnogroup:x:65534:\njob:x:1000:\n"
LAUNCHER = f"""#!/{PY_PREFIX}/bin/{PY}
import sys
from corral.cli import main
sys.exit(main())
"""
ELF_MAGIC = b"\x7fELF"
PYC_TAG = f".cpython-{sys.version_info.major}{sys.version_info.minor}"  # other versions' byte code: left out


def runtime_dists() -> list[md.Distribution]:
    """corral's runtime dependencies (transitively, extras they name included), never its `test` extra."""
    env: dict[str, str] = {k: str(v) for k, v in default_environment().items()}
    seen: dict[str, md.Distribution] = {}
    todo: list[tuple[str, frozenset[str]]] = [("corral", frozenset())]
    done: set[tuple[str, frozenset[str]]] = set()
    while todo:
        name, extras = todo.pop()
        if (name, extras) in done:
            continue
        done.add((name, extras))
        dist = md.distribution(name)
        seen[canonicalize_name(name)] = dist
        for line in dist.requires or []:
            req = Requirement(line)
            wanted = req.marker is None or any(
                req.marker.evaluate({**env, "extra": e}) for e in (extras or {""})
            )
            if wanted:
                todo.append((canonicalize_name(req.name), frozenset(req.extras)))
    seen.pop("corral")
    return sorted(seen.values(), key=lambda d: canonicalize_name(d.metadata["Name"]))


def base_python() -> tuple[Path, Path, Path]:
    """The venv's base interpreter (resolved), its stdlib dir and its lib-dynload dir."""
    exe = Path(getattr(sys, "_base_executable", sys.executable)).resolve()
    out = subprocess.run(
        [str(exe), "-I", "-c",
         "import sysconfig, sys; print(sysconfig.get_paths()['stdlib']); "
         "print([p for p in sys.path if p.endswith('lib-dynload')][0])"],
        check=True, capture_output=True, text=True,
    ).stdout.split("\n")
    return exe, Path(out[0]).resolve(), Path(out[1]).resolve()


def corral_sources() -> Iterator[Path]:
    for path in sorted(SRC.rglob("*")):
        if "__pycache__" not in path.parts and path.is_file() and not path.name.endswith(".pyc"):
            yield path


def digest() -> str:
    h = hashlib.sha256()
    h.update(Path(__file__).read_bytes())
    for path in corral_sources():
        h.update(str(path.relative_to(SRC)).encode() + b"\0" + path.read_bytes())
    for dist in runtime_dists():
        h.update(f"{dist.metadata['Name']}=={dist.version}\n".encode())
    h.update(sys.version.encode())
    h.update(subprocess.run(["git", "--version"], check=True, capture_output=True).stdout)
    return h.hexdigest()[:32]


class Tree:
    """The image's root filesystem being written at `root`; host paths keep their place in it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.elves: list[Path] = []  # host paths of ELF files copied (their libraries are added)

    def dest(self, image_path: str | Path) -> Path:
        return self.root / str(image_path).lstrip("/")

    def mkdir(self, image_path: str, mode: int = 0o755) -> Path:
        d = self.dest(image_path)
        d.mkdir(parents=True, exist_ok=True)
        d.chmod(mode)
        return d

    def copy(self, src: Path, image_path: str | Path | None = None) -> None:
        """Copy a file (a symlink stays a symlink, and its target is copied too)."""
        target = self.dest(image_path if image_path is not None else src)
        if target.exists() or target.is_symlink():
            return
        self._parents(Path(image_path if image_path is not None else src).parent)
        if src.is_symlink():
            link = os.readlink(src)
            target.symlink_to(link)
            if image_path is None:
                self.copy(Path(os.path.normpath(src.parent / link)))
            return
        shutil.copy2(src, target)
        if _is_elf(src):
            self.elves.append(src)

    def _parents(self, image_dir: Path) -> None:
        """Make image_dir's components, as the host has them: /lib -> usr/lib stays a link."""
        acc = Path("/")
        for part in image_dir.parts[1:] if image_dir.is_absolute() else image_dir.parts:
            acc = acc / part
            here = self.dest(acc)
            if here.exists() or here.is_symlink():
                continue
            if acc.is_symlink():
                link = os.readlink(acc)
                here.symlink_to(link)
                self._parents(Path(os.path.normpath(acc.parent / link)))
            else:
                here.mkdir(mode=0o755)

    def copy_tree(
        self, src: Path, image_dir: str, skip: Iterable[str] = (), skip_re: re.Pattern[str] | None = None
    ) -> None:
        skipped = set(skip)
        for dirpath, dirnames, filenames in os.walk(src):
            rel = Path(dirpath).relative_to(src)
            if rel == Path("."):
                dirnames[:] = [d for d in dirnames if d not in skipped and not (skip_re and skip_re.match(d))]
            for name in filenames + [d for d in dirnames if (Path(dirpath) / d).is_symlink()]:
                host = Path(dirpath) / name
                if _foreign_pyc(host):
                    continue
                dest = self.dest(Path(image_dir) / rel / name)
                dest.parent.mkdir(parents=True, exist_ok=True)
                if host.is_symlink():
                    if not dest.is_symlink():
                        dest.symlink_to(os.readlink(host))
                    continue
                shutil.copy2(host, dest)
                if _is_elf(host):
                    self.elves.append(host)

    def libraries(self, own: Iterable[Path]) -> None:
        """Every shared library the copied ELF files load (ldd), except those shipped inside `own` dirs
        (a wheel's bundled .libs: copied with it)."""
        owned = [str(p) + "/" for p in own]
        wanted: set[str] = set()
        for elf in self.elves:
            done = subprocess.run(["ldd", str(elf)], capture_output=True, text=True)
            for line in done.stdout.splitlines():
                m = re.search(r"(/\S+)\s+\(0x", line)
                if m and not any(m.group(1).startswith(o) for o in owned):
                    wanted.add(m.group(1))
        for lib in sorted(wanted):
            self.copy(Path(lib))


def _foreign_pyc(path: Path) -> bool:
    return path.suffix == ".pyc" and PYC_TAG not in path.name


def _is_elf(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == ELF_MAGIC
    except OSError:
        return False


def build(root: Path) -> None:
    if any(root.iterdir()):
        raise SystemExit(f"{root} is not empty")
    t = Tree(root)
    exe, stdlib, dynload = base_python()
    site = Path(sysconfig.get_paths()["purelib"])
    # busybox: a shell and the usual tools, as in corral/busybox:1
    t.copy(BUSYBOX, "/bin/busybox")
    listed = subprocess.run([str(BUSYBOX), "--list"], check=True, capture_output=True, text=True)
    for name in listed.stdout.split():
        if name != "busybox" and not t.dest(f"/bin/{name}").exists():
            t.dest(f"/bin/{name}").symlink_to("busybox")
    # bash: the diff's pipeline keeps git's exit status with pipefail (workspace.host.diff_bytes)
    t.copy(Path(shutil.which("bash") or "/usr/bin/bash").resolve(), "/usr/bin/bash")
    # git and its helpers (git-remote-http speaks https through libcurl)
    git = Path(shutil.which("git") or "/usr/bin/git").resolve()
    t.copy(git, "/usr/bin/git")
    t.copy_tree(GIT_CORE, str(GIT_CORE))
    if GIT_TEMPLATES.is_dir():
        t.copy_tree(GIT_TEMPLATES, str(GIT_TEMPLATES))
    # the interpreter, its standard library and its extension modules
    t.copy(exe, f"/{PY_PREFIX}/bin/{PY}")
    for alias in ("python3", "python"):
        t.dest(f"/{PY_PREFIX}/bin/{alias}").symlink_to(PY)
    t.copy_tree(stdlib, f"/{PY_PREFIX}/lib/{PY}", skip=STDLIB_SKIP, skip_re=STDLIB_SKIP_RE)
    if dynload.parent != stdlib:  # Debian keeps lib-dynload beside, pyenv inside the stdlib
        t.copy_tree(dynload, f"/{PY_PREFIX}/lib/{PY}/lib-dynload")
    # corral (its sources; the dist-info so importlib.metadata finds it) and its runtime deps
    t.copy_tree(SRC, f"/{SITE}/corral")
    info = md.distribution("corral")
    for name in ("METADATA", "WHEEL", "entry_points.txt", "top_level.txt"):
        text = info.read_text(name)
        if text is not None:
            p = t.dest(f"/{SITE}/corral-{info.version}.dist-info/{name}")
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(text)
    for dist in runtime_dists():
        for f in dist.files or []:
            host = Path(str(dist.locate_file(f))).resolve()
            try:
                rel = host.relative_to(site)
            except ValueError:
                continue  # a console script in the venv's bin
            if host.is_file() and not _foreign_pyc(host):
                dest = t.dest(f"/{SITE}/{rel}")
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(host, dest)
                if _is_elf(host):
                    t.elves.append(host)
    launcher = t.dest(f"/{PY_PREFIX}/bin/corral")
    launcher.write_text(LAUNCHER)
    launcher.chmod(0o755)
    # shared libraries, and the loader's cache (libpython lives in /usr/local/lib)
    # A libpython beside the interpreter (pyenv's --enable-shared; Debian's links it in) goes to
    # /usr/local/lib; any other library stays where the host has it.
    libpython = sorted(exe.parent.parent.glob("lib/libpython3*.so*"))
    t.libraries([site, stdlib, dynload, *(exe.parent.parent / "lib" for _ in libpython[:1])])
    for lib in libpython:
        t.copy(lib, f"/{PY_PREFIX}/lib/{lib.name}")
    t.mkdir("/etc")
    t.dest("/etc/ld.so.conf").write_text(f"/{PY_PREFIX}/lib\n/usr/lib/x86_64-linux-gnu\n")
    subprocess.run(["ldconfig", "-r", str(root)], check=True)
    # certificates, users, the places a pod mounts
    if CA_BUNDLE.exists():
        t.copy(CA_BUNDLE.resolve(), str(CA_BUNDLE))
    t.dest("/etc/passwd").write_text(PASSWD)
    t.dest("/etc/group").write_text(GROUP)
    t.dest("/etc/nsswitch.conf").write_text("passwd: files\ngroup: files\nhosts: files dns\n")
    t.mkdir("/tmp", 0o1777)
    for d in ("/data", "/job", "/root"):
        t.mkdir(d, 0o700 if d == "/root" else 0o755)
    # byte code for what has none yet (corral's own modules), paths shown as the image has them
    subprocess.run(
        [str(exe), "-m", "compileall", "-q", "-j", "0", "-s", str(root), "-p", "/", str(t.dest(f"/{SITE}"))],
        check=True,
    )
    for path in root.rglob("*"):  # readable by the pod's user; nothing writable but /tmp
        if not path.is_symlink():
            mode = path.stat().st_mode
            if stat.S_ISDIR(mode) and path != t.dest("/tmp") and path != t.dest("/root"):
                path.chmod(0o755)
            elif stat.S_ISREG(mode):
                path.chmod(0o755 if mode & 0o111 else 0o644)


def main(argv: list[str]) -> int:
    if argv[:1] == ["digest"]:
        print(digest())
        return 0
    if len(argv) == 2 and argv[0] == "rootfs":
        build(Path(argv[1]))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
