"""What every route needs: the server's state (settings, store, notifier, metrics) and ApiError."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Request

from corral.server.metrics import Metrics
from corral.server.notify import Notifier
from corral.server.settings import ServerSettings
from corral.server.store.store import Store


class ApiError(Exception):
    """An HTTP error with a message for the caller: rendered as {"error": message} (+ extra fields)."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra


@dataclass
class ServerState:
    settings: ServerSettings
    store: Store
    notifier: Notifier = field(default_factory=Notifier)
    metrics: Metrics = field(default_factory=Metrics)


def get_state(request: Request) -> ServerState:
    state: ServerState = request.app.state.corral
    return state


StateDep = Annotated[ServerState, Depends(get_state)]
