"""`corral server` under cProfile, every thread included (for `python -m bench --profile`).

`python -m cProfile` only sees the main thread, but the server runs every store call in
`asyncio.to_thread` workers. Here each new thread gets its own profiler (threading.setprofile), the
main thread (uvicorn's event loop) another one, and at shutdown (SIGTERM) both sets are written:
<out>.main (event loop thread) and <out>.threads (all worker threads, merged).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import signal
import threading
from pathlib import Path
from typing import Any

_profiles: list[cProfile.Profile] = []
_lock = threading.Lock()


def _start_thread_profiler(*_args: Any) -> None:
    # Called as the profile hook at the first event of a new thread: replace it by a real profiler.
    prof = cProfile.Profile()
    with _lock:
        _profiles.append(prof)
    prof.enable()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--log-level", default="warning")
    a = ap.parse_args()

    import uvicorn

    from corral.server.app import create_app
    from corral.server.settings import ServerSettings

    settings = ServerSettings(host=a.host, port=a.port, data_dir=a.data_dir)
    settings.check()
    app = create_app(settings)
    # uvicorn re-raises the SIGTERM it caught once it has shut down; with the default handler that
    # would end the process before the profiles are written, so make that second delivery a no-op.
    signal.signal(signal.SIGTERM, lambda *_: None)
    threading.setprofile(_start_thread_profiler)
    main_prof = cProfile.Profile()
    main_prof.enable()
    try:
        uvicorn.run(app, host=a.host, port=a.port, log_level=a.log_level, access_log=False)
    finally:
        main_prof.disable()
        threading.setprofile(None)  # type: ignore[arg-type]
        main_prof.dump_stats(str(a.out) + ".main")
        with _lock:
            profs = list(_profiles)
        if profs:
            stats = pstats.Stats(profs[0])
            for p in profs[1:]:
                stats.add(p)
            stats.dump_stats(str(a.out) + ".threads")


if __name__ == "__main__":
    main()
