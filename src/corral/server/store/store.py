"""The store's old import path (one 700-line module before the split into corral.server.store).

Kept for callers outside the server's tree that still import `Store` from here (tests/e2e); new
code imports from corral.server.store, where `Store` is the Protocol and `SqlStore` this class.
"""

from __future__ import annotations

from corral.server.store.jobs import RESET_FAILURE, hash_token
from corral.server.store.queues import DEFAULT_QUEUES
from corral.server.store.rows import TERMINAL, JobAuth
from corral.server.store.sql import SqlStore as Store

__all__ = ["DEFAULT_QUEUES", "RESET_FAILURE", "TERMINAL", "JobAuth", "Store", "hash_token"]
