"""Printing job log events in a terminal (used by `corral job logs -f`, `corral batch` and the demo)."""

from __future__ import annotations

from typing import Any

import typer


def print_event(ev: dict[str, Any], prefix: str = "") -> None:
    kind = ev.get("type")
    if kind == "entry":
        cmd = " ".join(ev.get("command") or [])
        typer.secho(f"{prefix}▶ {ev['key']}" + (f"  $ {cmd[:100]}" if cmd else ""), fg=typer.colors.CYAN)
    elif kind == "output":
        for line in ev["data"].splitlines():
            typer.echo(f"{prefix}  {line}")
    elif kind == "exit":
        color = typer.colors.GREEN if ev["exitCode"] == 0 else typer.colors.RED
        typer.secho(f"{prefix}  ⏹ exit {ev['exitCode']} ({ev.get('durationMs') or 0} ms)", fg=color)
    elif kind == "state":
        color = typer.colors.GREEN if ev["state"] == "completed" else typer.colors.RED
        err = f": {ev['error']}" if ev.get("error") else ""
        typer.secho(f"{prefix}● job {ev['state']}{err}", fg=color, bold=True)
