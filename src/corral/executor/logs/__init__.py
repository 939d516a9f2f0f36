"""A command's log: captured and capped (`capture`), shipped to the server (`ship`).

A disk spool (entries survive a server outage or an executor restart) goes between the two: the
shipper would read a spooled `Capture.text` by offset instead of memory. Redaction is
`corral.executor.redact`, applied in `Capture` before anything is kept.
"""

from corral.executor.logs.capture import Capture
from corral.executor.logs.ship import FLUSH_INTERVAL, MAX_SEND, LogEntry

__all__ = ["FLUSH_INTERVAL", "MAX_SEND", "Capture", "LogEntry"]
