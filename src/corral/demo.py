"""`corral demo`: a server, an executor and a batch change across three sample repositories.

It shows the whole system in under a minute: the repositories are registered with the server,
one job per repository is queued, the executor clones each at its commit and runs the steps in a
sandbox (Docker with no network, or bubblewrap), logs stream live, and each diff is printed.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import typer

from corral.batch import BatchSpec, RepoRef, StepSpec, report, run
from corral.client import ProducerClient
from corral.embedded import embedded

SAMPLES: dict[str, dict[str, str]] = {
    "api": {
        "README.md": "# api\n\nRequests from hosts on the whitelist skip the rate limit.   \n",
        "server.py": "WHITELIST = ['10.0.0.1']\n\ndef allowed(host):\n\treturn host in WHITELIST  \n\n\n",
    },
    "web": {
        "config.yaml": "security:\n  whitelist: [example.org]   \n",
        "app.js": "// check the whitelist first\nfunction ok(h) {\n\treturn whitelist.includes(h);\n}\n",
    },
    "docs": {
        "guide.md": "Add your domain to the whitelist.\t\n\nThen restart.\n\n\n",
    },
}

FILES = r"find . \( -path ./.git -o -path ./.corral \) -prune -o -type f -print"
QUIET = "{ set +x; } 2>/dev/null"  # the steps say what they do; a shell trace of pipelines is noise
# corral-fmt (in the corral/tools image: images/corral-fmt), or the same awk on a host without it
# (the shell runtime runs steps on the host's tools)
FORMAT = (
    'fmt_files() { if command -v corral-fmt >/dev/null; then corral-fmt "$@"; else for f; do '
    'awk \'{ gsub(/\\t/, "    "); sub(/[ \\t]+$/, ""); lines[NR] = $0 } '
    'END { n = NR; while (n > 0 && lines[n] == "") n--; for (i = 1; i <= n; i++) print lines[i] }\' '
    '"$f" > "$f.fmt" && cat "$f.fmt" > "$f" && rm -f "$f.fmt"; done; fi; }'
)
STEPS = [
    StepSpec(
        image="corral/tools:1",
        run=f"{QUIET}\n"
        f"files=$({FILES} | xargs -r grep -l -i whitelist | sort) || true\n"
        'echo "mentions of whitelist in:" $files\n'
        '[ -z "$files" ] || sed -i "s/whitelist/allowlist/g; s/WHITELIST/ALLOWLIST/g" $files\n'
        'echo "replaced whitelist with allowlist"',
    ),
    StepSpec(
        image="corral/tools:1",
        run=f"{QUIET}\n{FORMAT}\nfiles=$({FILES} | sort)\nfmt_files $files\necho formatted: $files",
    ),
]


def make_samples(root: Path) -> list[Path]:
    env = {
        "GIT_AUTHOR_NAME": "corral demo",
        "GIT_AUTHOR_EMAIL": "demo@corral.invalid",
        "GIT_COMMITTER_NAME": "corral demo",
        "GIT_COMMITTER_EMAIL": "demo@corral.invalid",
        "PATH": "/usr/bin:/bin",
        "HOME": str(root),
    }
    paths = []
    for name, files in SAMPLES.items():
        repo = root / name
        repo.mkdir(parents=True)
        for f, text in files.items():
            (repo / f).write_text(text)
        for argv in (
            ["git", "init", "-q", "-b", "main"],
            ["git", "add", "."],
            ["git", "commit", "-qm", "initial"],
        ):
            subprocess.run(argv, cwd=repo, env=env, check=True, capture_output=True)
        paths.append(repo)
    return paths


def docker_ready() -> bool:
    if not shutil.which("docker"):
        return False
    try:
        ok = subprocess.run(["docker", "image", "inspect", "corral/tools:1"], capture_output=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return False
    return ok.returncode == 0


def run_demo(runtime: str | None, keep: bool, data_dir: Path | None) -> int:
    """Run the demo; returns how many repositories did not complete. With `keep` the server stays
    up (its URL and token are printed) until Ctrl-C or SIGTERM."""

    def say(text: str) -> None:
        typer.secho(text, fg=typer.colors.BLUE, bold=True)

    if runtime is None:
        runtime = "docker" if docker_ready() else "shell"
    tmp = Path(tempfile.mkdtemp(prefix="corral-demo-")) if data_dir is None else data_dir
    try:
        say(f"corral demo — runtime: {runtime}, data: {tmp}")
        typer.echo("1. Creating three sample repositories (api, web, docs) that still say 'whitelist'.")
        repos = make_samples(tmp / "samples")
        spec = BatchSpec(name="allowlist", repositories=[RepoRef(path=str(p)) for p in repos], steps=STEPS)
        typer.echo("2. Starting a server (SQLite in the data dir) and an executor, both on 127.0.0.1.")
        t0 = time.monotonic()
        with embedded(tmp / "server", runtime=runtime, max_jobs=2) as emb:
            client = ProducerClient(emb.url, emb.admin_token)
            sandbox = (
                "a container (no network, 1 CPU, 1 GiB)" if runtime == "docker" else "a bubblewrap sandbox"
            )
            typer.echo(
                f"3. Submitting the batch change: one job per repository, two steps each in {sandbox}:"
            )
            typer.echo("     - replace 'whitelist' with 'allowlist'      - format every file (corral-fmt)")
            typer.echo("4. Following the jobs' logs live (git's own output is shown only if it fails):\n")
            runs = run(spec, client, Path.cwd(), local=True)
            typer.echo()
            say(f"5. Results after {time.monotonic() - t0:.1f}s — one diff per repository:")
            bad = report(runs)
            typer.echo()
            if keep:
                typer.echo(f"The server keeps running at {emb.url} (--keep); press Ctrl-C to stop it. Try:")
                typer.echo(f"   export CORRAL_URL={emb.url} CORRAL_ADMIN_TOKEN={emb.admin_token}")
                first = runs[0].job_id
                typer.echo(f"   corral job list; corral job logs {first}; corral job result {first} --diff")
                try:
                    while True:
                        time.sleep(3600)  # until Ctrl-C (or SIGTERM: the CLI makes it a KeyboardInterrupt)
                except KeyboardInterrupt:
                    typer.echo("stopping the server and executor…")
            else:
                typer.echo("The server and executor have stopped. `corral demo --keep` leaves them running,")
                typer.echo("to explore with `corral job list`, `corral job logs` and `corral job result`.")
            client.close()
        return bad
    finally:
        if data_dir is None and not keep:
            shutil.rmtree(tmp, ignore_errors=True)
