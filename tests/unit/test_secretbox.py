"""corral.server.secretbox: AES-GCM sealing, associated data, several keys, the key file."""

from __future__ import annotations

import base64
import os
import stat
import threading
from pathlib import Path

import pytest

from corral.errors import ConfigError
from corral.protocol.secrets import last_newline_dropped
from corral.server.secretbox import KEY_ENV, KEY_FILE, Keyring, SecretKeyError, associated_data, new_key

AAD = associated_data(7, "TOKEN", "user:alice")


def test_seal_and_open() -> None:
    ring = Keyring.parse(new_key())
    sealed, kid = ring.seal("välue", AAD)
    assert kid == ring.primary_id and len(kid) == 16
    assert "välue".encode() not in sealed
    assert ring.open(sealed, AAD, kid, "secret TOKEN") == "välue"
    assert ring.seal("välue", AAD)[0] != sealed  # a fresh nonce


@pytest.mark.parametrize(
    "other",
    [
        associated_data(8, "TOKEN", "user:alice"),
        associated_data(7, "TOKEN2", "user:alice"),
        associated_data(7, "TOKEN", None),
        associated_data(7, "TOKEN", "org:alice"),
    ],
)
def test_another_rows_associated_data_does_not_open(other: bytes) -> None:
    ring = Keyring.parse(new_key())
    sealed, kid = ring.seal("value", AAD)
    with pytest.raises(SecretKeyError, match="does not decrypt") as info:
        ring.open(sealed, other, kid, "secret X")
    assert "value" not in str(info.value).replace("stored value", "")


def test_a_flipped_bit_does_not_open() -> None:
    ring = Keyring.parse(new_key())
    sealed, kid = ring.seal("value", AAD)
    for i in (1, 13, len(sealed) - 1):
        bad = bytearray(sealed)
        bad[i] ^= 1
        with pytest.raises(SecretKeyError):
            ring.open(bytes(bad), AAD, kid, "secret X")
    with pytest.raises(SecretKeyError, match="unknown form"):
        ring.open(b"\x02" + sealed[1:], AAD, kid, "secret X")


def test_rotation_keys_first_seals_all_open() -> None:
    old, new = new_key(), new_key()
    sealed, old_id = Keyring.parse(old).seal("value", AAD)
    both = Keyring.parse(f" {new} , {old} ")
    assert both.primary_id != old_id and both.key_ids[1] == old_id
    assert both.open(sealed, AAD, old_id, "s") == "value"
    assert both.seal("value", AAD)[1] == both.primary_id
    with pytest.raises(SecretKeyError, match=f"encrypted with key {old_id}, which is not configured"):
        Keyring.parse(new).open(sealed, AAD, old_id, "s")
    assert old not in repr(both) and new not in repr(both)


def test_env_wins_over_the_key_file(tmp_path: Path) -> None:
    key = new_key()
    ring = Keyring.load(tmp_path, {KEY_ENV: key})
    assert ring.keys == (base64.b64decode(key),)
    assert not (tmp_path / KEY_FILE).exists()


def test_the_key_file_is_made_once_by_concurrent_servers(tmp_path: Path) -> None:
    rings: list[Keyring] = []
    threads = [threading.Thread(target=lambda: rings.append(Keyring.load(tmp_path, {}))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(rings) == 8 and len({r.primary_id for r in rings}) == 1
    assert stat.S_IMODE((tmp_path / KEY_FILE).stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == [KEY_FILE]


def test_a_readable_key_file_is_tightened(tmp_path: Path) -> None:
    path = tmp_path / KEY_FILE
    path.write_text(new_key() + "\n")
    os.chmod(path, 0o644)
    Keyring.load(tmp_path, {})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_key_file_that_is_no_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / KEY_FILE).mkdir()
    with pytest.raises(ConfigError):
        Keyring.load(tmp_path, {})
    os.rmdir(tmp_path / KEY_FILE)
    os.mkfifo(tmp_path / KEY_FILE)
    with pytest.raises(ConfigError, match="not a regular file"):
        Keyring.load(tmp_path, {})


def test_a_shared_database_without_the_env_key_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    Keyring.load(tmp_path, {}, shared=True)
    assert f"{KEY_ENV} is unset" in caplog.text and "the same on every replica" in caplog.text
    caplog.clear()
    Keyring.load(tmp_path, {KEY_ENV: new_key()}, shared=True)
    Keyring.load(tmp_path, {}, shared=False)
    assert caplog.text == ""


# -- review 12b: the stored secrets' keys are checked at start (H3) ------------------------------
def test_a_key_that_sealed_stored_secrets_must_be_configured(tmp_path: Path) -> None:
    k1, k2 = new_key(), new_key()
    sealed_with = Keyring.parse(k1).primary_id
    stored = {sealed_with: 3, Keyring.parse(k2).primary_id: 1}
    with pytest.raises(ConfigError) as info:
        Keyring.load(tmp_path, {KEY_ENV: k2}, stored=stored)
    text = str(info.value)
    assert "3 of the database's 4 executor secrets" in text and sealed_with in text
    assert k1 not in text and k2 not in text
    assert Keyring.load(tmp_path, {KEY_ENV: f"{k2},{k1}"}, stored=stored).key_ids[1] == sealed_with


def test_no_key_file_is_made_while_the_database_holds_secrets(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"does not exist, but the database holds 2 executor secrets"):
        Keyring.load(tmp_path, {}, stored={"00112233aabbccdd": 2})
    assert not (tmp_path / KEY_FILE).exists()
    made = Keyring.load(tmp_path, {}, stored={})  # an empty database: the key is made, as before
    assert (tmp_path / KEY_FILE).exists()
    assert Keyring.load(tmp_path, {}, stored={made.primary_id: 5}) == made


# -- review 12b S9: the CLI drops one trailing line ending of a file or stdin ---------------------
@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("tok\n", "tok"),
        ("tok\r\n", "tok"),
        ("tok", "tok"),
        ("tok\n\n", "tok\n"),
        ("tok\r\n\r\n", "tok\r\n"),
        ("tok\r", "tok\r"),
        ("a\r\nb\r\n", "a\r\nb"),
    ],
)
def test_the_last_line_ending_is_dropped(text: str, value: str) -> None:
    assert last_newline_dropped(text) == value
