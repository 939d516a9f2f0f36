"""`corral batch run SPEC.yaml`: the same steps in several local repositories, one diff each."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.conftest import docker_ok, require
from tests.e2e.kit import CORRAL, make_repo


def test_batch_run_with_an_embedded_server(tmp_path: Path) -> None:
    require(docker_ok(), "Docker Engine is not reachable (run scripts/setup.sh)")
    make_repo(tmp_path / "one", {"a.txt": "color\n"})
    make_repo(tmp_path / "two", {"b.txt": "color and more color\n"})
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "name: spelling\n"
        "repositories: [{path: one}, {path: two}]\n"
        "steps:\n"
        "  - image: corral/busybox:1\n"
        "    run: |\n"
        "      sed -i 's/color/colour/g' *.txt\n"
        "timeout: 2m\n"
    )
    p = subprocess.run(
        [CORRAL, "batch", "run", str(spec), "--data-dir", str(tmp_path / "data")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = p.stdout + p.stderr
    assert p.returncode == 0, out
    assert "✓ local/one" in out and "✓ local/two" in out
    assert "+colour" in out and "+colour and more colour" in out


def test_batch_run_rejects_a_bad_spec(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: x\nrepositories: []\nsteps: [{image: a}]\n")
    p = subprocess.run([CORRAL, "batch", "run", str(spec)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    assert "invalid batch spec" in p.stderr and "run" in p.stderr
