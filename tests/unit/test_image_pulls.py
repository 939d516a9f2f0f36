"""Pull failures of the docker runtime: a missing image is the job's fault (reason image: failed), an
unreachable registry is not (reason docker: errored, retried). No daemon and no DNS here: the
Engine's answers are the messages a real dockerd gave (quoted), name resolution is faked."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from corral.errors import DockerAPIError, Reason, RuntimeFailure
from corral.executor.runtimes.docker.images import Images, PulledImages, pull_failure

# (Engine status, message) -> what it means. "connection refused", "EOF" and "manifest unknown" are
# what dockerd 20.10 answered on this machine (a closed port, a socket that hangs up, Debian's
# docker-registry); the others are the wordings of Go's resolver and net/http, Docker Hub and the
# registry API's error codes (distribution's errcode), as dockerd passes them on.
REFUSED = 'Get "http://127.0.0.1:33065/v2/": dial tcp 127.0.0.1:33065: connect: connection refused'
MESSAGES = [
    (500, REFUSED, "docker"),
    (
        500,
        'Get "https://reg.example.invalid/v2/": dial tcp: lookup reg.example.invalid on 10.255.255.53:53: '
        "no such host",
        "docker",
    ),
    (500, 'Get "http://127.0.0.1:41234/v2/": EOF', "docker"),  # a registry that hangs up
    (500, 'Get "https://r.example/v2/": net/http: TLS handshake timeout', "docker"),
    (200, "toomanyrequests: You have reached your pull rate limit.", "docker"),  # in the progress stream
    (200, "read tcp 172.17.0.1:53212->10.0.0.1:443: read: connection reset by peer", "docker"),
    (0, "cannot reach the Docker Engine at unix:///var/run/docker.sock: ...", "docker"),
    (500, "received unexpected HTTP status: 503 Service Unavailable", "docker"),
    (404, "manifest for 127.0.0.1:5099/x/y:nope not found: manifest unknown: manifest unknown", "image"),
    (
        404,
        "pull access denied for nosuch, repository does not exist or may require 'docker login': "
        "denied: requested access to the resource is denied",
        "image",
    ),
    (500, 'Head "http://127.0.0.1:5000/v2/jobs/busybox/manifests/1": no basic auth credentials', "image"),
    (500, "unauthorized: authentication required", "image"),
    (200, "no matching manifest for linux/amd64 in the manifest list entries", "image"),
    (400, "invalid reference format", "image"),
    (404, "something new a later dockerd says", "image"),  # a 4xx: the request's (the image's)
    (500, "something new a later dockerd says", "docker"),  # a 5xx: the daemon's or the network's
]


@pytest.mark.parametrize(("status", "message", "kind"), MESSAGES)
def test_pull_failure_tells_a_missing_image_from_an_unreachable_registry(
    status: int, message: str, kind: str
) -> None:
    assert pull_failure(status, message) == Reason(kind)


class FakeEngine:
    """The two Engine calls `Images.ensure` makes before a pull: no local image, a failing pull."""

    def __init__(self, status: int, message: str) -> None:
        self.status, self.message = status, message
        self.pulls: list[tuple[str, str]] = []

    async def image_inspect(self, name: str) -> dict[str, Any] | None:
        return None

    async def image_pull(self, repo: str, tag: str, *, registry_auth: str | None = None) -> None:
        self.pulls.append((repo, tag))
        raise DockerAPIError(self.status, self.message)


def images(engine: FakeEngine, allowed: frozenset[str] = frozenset()) -> Images:
    return Images(
        engine,  # type: ignore[arg-type]
        PulledImages(),
        pull=True,
        pull_timeout=30,
        allowed_registries=allowed,
    )


async def test_a_registry_the_daemon_cannot_resolve_is_retried_not_failed() -> None:
    dns = (
        'Get "https://reg.example.invalid/v2/": dial tcp: lookup reg.example.invalid on 10.255.255.53:53: '
        "no such host"
    )
    engine = FakeEngine(500, dns)
    # allowed: the address check passes without resolving (nothing is looked up in this test)
    with pytest.raises(RuntimeFailure) as err:
        await images(engine, frozenset({"reg.example.invalid"})).ensure(None, "reg.example.invalid/a/b:1")
    assert engine.pulls == [("reg.example.invalid/a/b", "1")]
    assert err.value.reason is Reason.DOCKER
    assert "its registry reg.example.invalid cannot be reached" in err.value.message
    assert "no such host" in err.value.message and "retried" in err.value.message


async def test_a_missing_tag_fails_the_job() -> None:
    engine = FakeEngine(404, "manifest for 127.0.0.1:5099/x/y:nope not found: manifest unknown")
    with pytest.raises(RuntimeFailure) as err:
        await images(engine, frozenset({"127.0.0.1:5099"})).ensure(None, "127.0.0.1:5099/x/y:nope")
    assert err.value.reason is Reason.IMAGE
    assert err.value.message.startswith("image '127.0.0.1:5099/x/y:nope' not found: manifest for")


async def test_a_name_our_own_check_cannot_resolve_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[str] = []

    async def no_dns(host: str, *args: Any, **kw: Any) -> Any:
        asked.append(host)
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", no_dns)
    engine = FakeEngine(500, "never asked")
    with pytest.raises(RuntimeFailure) as err:
        await images(engine).ensure(None, "reg.example.invalid/a/b:1")
    assert asked == ["reg.example.invalid"] and engine.pulls == []  # refused before dockerd pulls
    assert err.value.reason is Reason.DOCKER
    assert "cannot be resolved" in err.value.message and "retried" in err.value.message


async def test_a_pull_that_takes_too_long_is_retried() -> None:
    class Hanging(FakeEngine):
        async def image_pull(self, repo: str, tag: str, *, registry_auth: str | None = None) -> None:
            await asyncio.sleep(60)

    imgs = images(Hanging(0, ""), frozenset({"127.0.0.1:5099"}))
    imgs.pull_timeout = 0.05
    with pytest.raises(RuntimeFailure) as err:
        await imgs.ensure(None, "127.0.0.1:5099/x/y:1")
    assert err.value.reason is Reason.DOCKER and "took longer than 0.05 s" in err.value.message
