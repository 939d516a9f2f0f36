"""A real private registry for tests: Debian's docker-registry (distribution 2.8) with htpasswd (bcrypt)
auth, on a free port of 127.0.0.1 only (never the package's default :5000 on all interfaces), under a
temp dir, always stopped. Images are pushed to it with the docker CLI and a docker config in a temp
dir (never the caller's ~/.docker), then untagged locally so that a job has to pull them."""

from __future__ import annotations

import base64
import json
import secrets
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.conftest import require

__all__ = ["Registry", "free_port", "password", "require_registry", "run_registry", "untag"]

START_TIMEOUT_S = 15.0  # seconds until the registry must answer /v2/


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def password() -> str:
    """A random password of lower-case letters and digits (so a test can put it in an image tag)."""
    return f"pw{secrets.token_hex(10)}"


def untag(image: str) -> None:
    subprocess.run(["docker", "rmi", image], capture_output=True, timeout=60)


def require_registry() -> None:
    require(
        bool(shutil.which("docker-registry") and shutil.which("htpasswd") and shutil.which("docker")),
        "docker-registry, htpasswd (apache2-utils) and the docker CLI are needed (run scripts/setup.sh)",
    )


@dataclass
class Registry:
    address: str  # 127.0.0.1:<port>
    users: Mapping[str, str]  # user -> password
    root: Path

    def auth(self, user: str, password: str | None = None) -> str:
        """A docker config's "auth" value: base64 of user:password (the user's own by default)."""
        return base64.b64encode(f"{user}:{password or self.users[user]}".encode()).decode()

    def config(self, user: str, password: str | None = None) -> dict[str, Any]:
        """A docker config ({"auths": ...}) with `user`'s credentials for this registry."""
        return {"auths": {self.address: {"auth": self.auth(user, password)}}}

    def push(self, local_image: str, repo: str, tag: str = "1") -> str:
        """Push `local_image` as <address>/<repo>:<tag>, untag it locally; the reference."""
        image = f"{self.address}/{repo}:{tag}"
        user = next(iter(self.users))
        cli = self.root / f"cli-{secrets.token_hex(4)}"
        cli.mkdir(mode=0o700)
        (cli / "config.json").write_text(json.dumps(self.config(user)))
        try:
            subprocess.run(["docker", "tag", local_image, image], check=True, capture_output=True, timeout=60)
            push = subprocess.run(
                ["docker", "--config", str(cli), "push", image], capture_output=True, text=True, timeout=120
            )
            assert push.returncode == 0, push.stderr
        finally:
            untag(image)
            shutil.rmtree(cli)
        return image


@contextmanager
def run_registry(root: Path, users: Mapping[str, str]) -> Iterator[Registry]:
    """docker-registry with these htpasswd users under `root`, listening on 127.0.0.1 only."""
    require_registry()
    root.mkdir(parents=True, exist_ok=True)
    (root / "data").mkdir()
    lines = []
    for user, pw in users.items():
        out = subprocess.run(
            ["htpasswd", "-Bbn", user, pw], capture_output=True, text=True, timeout=30, check=True
        )
        lines.append(out.stdout.strip())
    (root / "htpasswd").write_text("\n".join(lines) + "\n")
    address = f"127.0.0.1:{free_port()}"
    (root / "config.yml").write_text(
        "version: 0.1\n"
        "log: { level: warn }\n"
        f"storage: {{ filesystem: {{ rootdirectory: {root / 'data'} }}, delete: {{ enabled: true }} }}\n"
        f"http: {{ addr: '{address}' }}\n"
        f"auth: {{ htpasswd: {{ realm: corral-test, path: {root / 'htpasswd'} }} }}\n"
    )
    log = (root / "log").open("wb")
    proc = subprocess.Popen(
        ["docker-registry", "serve", str(root / "config.yml")], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                urllib.request.urlopen(f"http://{address}/v2/", timeout=1)
            except urllib.error.HTTPError as exc:
                if exc.code == 401:  # up, and asking for credentials
                    break
            except OSError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, (root / "log").read_text()
            time.sleep(0.05)
        yield Registry(address, dict(users), root)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()
