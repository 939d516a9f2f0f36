"""Test kit: a made-up certificate authority and local job images that trust it, built without any
registry (FROM the local corral/busybox:1, `docker build --network none`).

- `make_ca(dir)`: a CA (self-signed, CA:TRUE) and a server certificate it signed, made with the
  host's `openssl` in `dir`;
- `build_tls_base(tag, dir)`: corral/busybox:1 plus what Debian's `update-ca-certificates` needs:
  the `openssl` binary and its libraries (as `ldd` lists them), the script itself, Debian's
  /usr/share/ca-certificates with /etc/ca-certificates.conf, /etc/ssl and /usr/lib/ssl; the
  system bundle is built in the image (Mozilla's CAs only);
- `build_with_ca(tag, base, ca, dir)`: the image the README describes for custom CAs: the CA copied
  into /usr/local/share/ca-certificates/ and `RUN update-ca-certificates` (the same Dockerfile an
  operator writes; the image then works for the docker and the firecracker runtimes alike).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CA", "build_tls_base", "build_with_ca", "make_ca", "remove_image"]

BASE_IMAGE = "corral/busybox:1"  # scripts/build-images.sh: local, never pulled
OPENSSL = "/usr/bin/openssl"
UPDATE_CA = "/usr/sbin/update-ca-certificates"
BUILD_TIMEOUT_S = 300.0
IMAGE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class CA:
    cert: Path  # the CA's certificate (PEM)
    server_cert: Path  # a certificate for "corral-test.invalid", signed by the CA
    subject: str  # the CA's common name


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run([OPENSSL, *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(directory: Path, name: str = "corral made-up test CA") -> CA:
    directory.mkdir(parents=True, exist_ok=True)
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-keyout", "ca.key", "-out", "ca.crt", "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=corral-test.invalid",
        cwd=directory,
    )
    (directory / "server.ext").write_text(
        "subjectAltName=DNS:corral-test.invalid\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n"
    )
    _openssl(
        "x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "2", "-extfile", "server.ext", "-out", "server.crt",
        cwd=directory,
    )
    return CA(directory / "ca.crt", directory / "server.crt", name)


def _libraries(binary: str) -> list[Path]:
    """The shared objects `binary` loads (ldd), the loader included, by the path it looks them up."""
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True, timeout=30).stdout
    paths = []
    for line in out.splitlines():
        path = next((p for p in line.split() if p.startswith("/")), None)
        if path is not None:
            paths.append(Path(path))
    return paths


def _copy_into(root: Path, source: Path) -> None:
    """Copy `source` (a file, dereferenced) to the same absolute path under `root`."""
    target = root / source.relative_to("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(os.path.realpath(source), target)


def _build(tag: str, context: Path) -> None:
    proc = subprocess.run(
        ["docker", "build", "--network", "none", "-q", "-t", tag, str(context)],
        env={**os.environ, "DOCKER_BUILDKIT": "0"},
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"docker build {tag} failed: {proc.stderr.strip() or proc.stdout.strip()}")


def build_tls_base(tag: str, directory: Path) -> str:
    """corral/busybox:1 with openssl and update-ca-certificates; its bundle holds Debian's CAs only."""
    context = directory / "tls-base"
    root = context / "root"
    for f in (OPENSSL, UPDATE_CA, "/etc/ca-certificates.conf", "/etc/ssl/openssl.cnf"):
        _copy_into(root, Path(f))
    for lib in _libraries(OPENSSL):
        _copy_into(root, lib)
    shutil.copytree("/usr/share/ca-certificates", root / "usr/share/ca-certificates", symlinks=True)
    (root / "etc/ssl/certs").mkdir(parents=True)
    (root / "etc/ssl/private").mkdir(mode=0o700)
    ssl = root / "usr/lib/ssl"
    ssl.mkdir(parents=True)
    for name, target in (
        ("certs", "/etc/ssl/certs"),
        ("cert.pem", "/etc/ssl/certs/ca-certificates.crt"),
        ("openssl.cnf", "/etc/ssl/openssl.cnf"),
        ("private", "/etc/ssl/private"),
    ):
        (ssl / name).symlink_to(target)
    (context / "Dockerfile").write_text(
        f"FROM {BASE_IMAGE}\nCOPY root/ /\nENV PATH={IMAGE_PATH}\nRUN update-ca-certificates\n"
    )
    _build(tag, context)
    return tag


def build_with_ca(tag: str, base: str, ca: CA, directory: Path) -> str:
    """The README's recipe: the CA into /usr/local/share/ca-certificates/, then update-ca-certificates."""
    context = directory / "with-ca"
    context.mkdir(parents=True)
    shutil.copy(ca.cert, context / "corral-test-ca.crt")
    (context / "Dockerfile").write_text(
        f"FROM {base}\n"
        "COPY corral-test-ca.crt /usr/local/share/ca-certificates/corral-test-ca.crt\n"
        "RUN update-ca-certificates\n"
    )
    _build(tag, context)
    return tag


def remove_image(tag: str) -> None:
    subprocess.run(["docker", "rmi", "-f", tag], capture_output=True, timeout=60, check=False)
