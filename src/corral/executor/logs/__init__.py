"""A command's log: captured and capped (`capture`), shipped to the server (`ship`).

The capture holds only what the server does not have yet (the head until it is acknowledged, the
tail in a ring on a spooled temporary file), so the executor's memory does not grow with a step's
output. A disk spool (entries that survive an executor restart) would go between the two: the
shipper reads the capture by offset already. Redaction is `corral.executor.redact`, applied in
`Capture` before anything is kept.
"""

from corral.executor.logs.capture import Capture
from corral.executor.logs.ship import FLUSH_INTERVAL, MAX_SEND, LogEntry

__all__ = ["FLUSH_INTERVAL", "MAX_SEND", "Capture", "LogEntry"]
