"""corral.embedded: a local run's own executor prefix and its hold on the data dir."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.embedded import PREFIX_FILE, _data_dir_lock, own_prefix
from corral.errors import ConfigError
from corral.executor.settings import ExecutorSettings


def test_a_data_dir_gets_one_prefix_of_its_own(tmp_path: Path) -> None:
    first = own_prefix(tmp_path)
    assert first.startswith("local-") and len(first) == len("local-") + 8
    assert own_prefix(tmp_path) == first  # kept: a later run sweeps what a crashed one left
    (tmp_path / "other").mkdir()
    assert own_prefix(tmp_path / "other") != first  # another data dir, another prefix
    # a valid EXECUTOR_VM_PREFIX
    env = {
        "EXECUTOR_FRONTEND_URL": "http://127.0.0.1:1",
        "EXECUTOR_FRONTEND_PASSWORD": "a-long-enough-shared-secret-0123456789",
        "EXECUTOR_QUEUE_NAME": "batches",
        "EXECUTOR_VM_PREFIX": first,
    }
    assert ExecutorSettings.from_env(env).vm_prefix == first


@pytest.mark.parametrize("kept", ["executor", "", "local-XYZ", "local-12345678\nexecutor", "../x"])
def test_a_prefix_file_that_is_not_ours_is_replaced(tmp_path: Path, kept: str) -> None:
    """Only a `local-<8 hex>` value is reused: never `executor` (every production executor's)."""
    (tmp_path / PREFIX_FILE).write_text(kept)
    prefix = own_prefix(tmp_path)
    assert prefix != kept.strip() and prefix.startswith("local-")
    assert (tmp_path / PREFIX_FILE).read_text().strip() == prefix


def test_one_run_at_a_time_holds_a_data_dir(tmp_path: Path) -> None:
    with _data_dir_lock(tmp_path):
        with pytest.raises(ConfigError, match="another local corral run"), _data_dir_lock(tmp_path):
            pass
    with _data_dir_lock(tmp_path):  # released
        pass
