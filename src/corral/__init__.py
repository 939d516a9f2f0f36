"""corral: run untrusted jobs in sandboxes on behalf of a central server."""

__version__ = "0.1.0"
