"""The job's network as the handler builds it (JobSpace.network): none unless the job asks (or every
job does), the executor's mode, the allow-list, and the server's address only for jobs with CLI
steps. JobHandler with a recording FakeRuntime against the in-process server (corral.testing)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from corral.executor.network import Allow, NetworkMode, NetworkPolicy
from corral.executor.runtimes.base import JobSpace
from corral.testing import FakeRuntime, Harness, fake_step


class Recording(FakeRuntime):
    def __init__(self) -> None:
        super().__init__()
        self.networks: list[NetworkPolicy] = []

    async def prepare(self, space: JobSpace) -> None:
        self.networks.append(space.network)
        await super().prepare(space)


@pytest.fixture
async def h(tmp_path: Path):
    async with Harness(tmp_path) as harness:
        yield harness


async def _run(h: Harness, settings_overrides: dict[str, object], **spec: object) -> tuple[Recording, dict]:
    fake = Recording()
    settings = h.executor_settings(**settings_overrides)
    job_id = await h.submit(fake_step(), **spec)
    handler = h.handler(fake, settings)
    await handler.handle(await h.dequeue(handler.client))
    return fake, await h.job(job_id)


async def test_a_job_that_does_not_ask_gets_no_network(h: Harness) -> None:
    fake, view = await _run(h, {"network": NetworkMode.DENY_PRIVATE})
    assert view["state"] == "completed", view
    assert fake.networks == [NetworkPolicy.none()]


async def test_a_job_asking_on_a_none_executor_fails_and_never_runs(h: Harness) -> None:
    fake, view = await _run(h, {}, network=True)
    assert view["state"] == "failed", view
    assert "this executor gives jobs no network (EXECUTOR_NETWORK=none)" in str(view)
    assert fake.networks == []  # nothing was prepared, no step ran


async def test_deny_private_gets_the_allow_list_and_the_uplink(h: Harness) -> None:
    overrides = {
        "network": NetworkMode.DENY_PRIVATE,
        "network_allow": ["198.51.100.10:8080"],
        "network_uplink_netns": "gw",
    }
    fake, view = await _run(h, overrides, network=True)
    assert view["state"] == "completed", view
    assert fake.networks == [NetworkPolicy.deny_private(["198.51.100.10:8080"], uplink="gw")]


async def test_every_job_gets_it_with_all_jobs_and_open_is_open(h: Harness) -> None:
    fake, _ = await _run(h, {"network": NetworkMode.OPEN, "network_all_jobs": True})
    assert fake.networks == [NetworkPolicy.open()]
    fake, _ = await _run(h, {"network": NetworkMode.NONE, "network_all_jobs": True})
    assert fake.networks == [NetworkPolicy.none()]  # all-jobs on a none executor: no network, no failure


async def test_only_a_job_with_cli_steps_may_reach_the_server(h: Harness) -> None:
    overrides = {"network": NetworkMode.DENY_PRIVATE, "frontend_url": "http://127.0.0.1:3080"}
    fake, _ = await _run(h, overrides, network=True)
    assert fake.networks[0].allow == ()
    fake, _ = await _run(h, overrides, network=True, cliSteps=[{"command": ["true"]}])
    server = Allow(ipaddress.ip_network("127.0.0.1/32"), 3080)
    assert fake.networks and server in fake.networks[-1].allow, fake.networks
