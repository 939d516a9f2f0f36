"""Fixtures for the server's HTTP tests: a real uvicorn server on 127.0.0.1 per test."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.server.store.store import Store
from tests.serverkit import Kit, RunningServer, reap_servers, serve, settings_for

ServerFactory = Callable[..., RunningServer]


@pytest.fixture(scope="session", autouse=True)
def _reap_servers() -> Iterator[None]:
    """Servers stop in the background (uvicorn pauses ~0.2 s on shutdown); wait for all at the end."""
    yield
    reap_servers()


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[ServerFactory]:
    """Start servers with custom settings (`make_server(extensions=False)`); all stop at the end."""
    stack = contextlib.ExitStack()
    count = 0

    def make(store: Store | None = None, **overrides: Any) -> RunningServer:
        nonlocal count
        count += 1
        settings = settings_for(tmp_path / f"server-{count}", **overrides)
        return stack.enter_context(serve(settings, store, background_stop=True))

    with stack:
        yield make


@pytest.fixture
def server(make_server: ServerFactory) -> RunningServer:
    return make_server()


@pytest.fixture
def kit(server: RunningServer) -> Iterator[Kit]:
    k = Kit(server)
    try:
        yield k
    finally:
        k.close()


@pytest.fixture
def make_kit(make_server: ServerFactory) -> Iterator[Callable[..., Kit]]:
    kits: list[Kit] = []

    def make(store: Store | None = None, **overrides: Any) -> Kit:
        k = Kit(make_server(store, **overrides))
        kits.append(k)
        return k

    try:
        yield make
    finally:
        for k in kits:
            k.close()
