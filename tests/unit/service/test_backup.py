"""`certdrop backup` and `certdrop restore` (service/backup.py, index/backup.py): what a
backup holds, what restore checks and refuses. The backup taken during a burst is in
tests/e2e/test_backup_restore.py."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

from certdrop.authority.ca import CertificateAuthority
from certdrop.index.store import Store
from conftest import CAEnv, make_env

PASSPHRASE = "ca key secret\n"


def encrypted_env(root: Path, init: bool = True) -> CAEnv:
    """A CA whose key is encrypted at rest ([ca] key_passphrase_file)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "ca-pass").write_text(PASSPHRASE)
    line = 'key_type = "ec-p256"\n'
    return make_env(
        root, init=init, replace={line: f'{line}key_passphrase_file = "{root / "ca-pass"}"\n'}
    )


def fill(env: CAEnv) -> None:
    """What a state folder holds besides the CA: a CRL, a password file, a held key."""
    code, _, err = env.cli("crl")
    assert code == 0, err
    for folder, name, data in (
        ("passwords", "alice.txt", b"s3cret\n"),
        ("pending-keys", "web.key", b"-----BEGIN PRIVATE KEY-----\n"),
    ):
        (env.state / folder).mkdir(mode=0o700, exist_ok=True)
        (env.state / folder / name).write_bytes(data)
        os.chmod(env.state / folder / name, 0o600)


def test_a_backup_holds_the_state_as_stored_with_a_manifest(tmp_path: Path) -> None:
    env = encrypted_env(tmp_path / "ca")
    fill(env)
    dest = tmp_path / "backup"
    code, out, err = env.cli("backup", str(dest))
    assert code == 0, err
    assert f"backed up {env.state} into {dest}" in out and "unencrypted" not in out
    manifest = json.loads((dest / "MANIFEST.json").read_text())
    assert sorted(manifest["files"]) == [
        "audit.log",
        "ca.cer",
        "ca.key",
        "crl.der",
        "crl.pem",
        "passwords/alice.txt",
        "pending-keys/web.key",
    ]  # not the lock, not the live index and its -wal
    assert manifest["dirs"] == {"passwords": "0700", "pending-keys": "0700"}
    for rel, facts in manifest["files"].items():
        copy = dest / "state" / rel
        assert copy.read_bytes() == (env.state / rel).read_bytes() or rel == "audit.log"
        assert facts["mode"] == f"{stat.S_IMODE((env.state / rel).stat().st_mode):04o}"
        assert stat.S_IMODE(copy.stat().st_mode) == int(facts["mode"], 8)
    assert b"ENCRYPTED PRIVATE KEY" in (dest / "state" / "ca.key").read_bytes()
    assert manifest["index"]["check"] == "ok" and manifest["index"]["certificates"] == 0
    assert manifest["crl_numbers"]["crl.der"] == manifest["index"]["crl_number"]
    assert (dest / "certdrop.toml").read_bytes() == env.config.read_bytes()
    assert not any(p.name.startswith(".") for p in dest.rglob("*"))  # no temporary files
    assert stat.S_IMODE(dest.stat().st_mode) == 0o700
    # the backup itself is in the audit log (after the copy was taken)
    last = json.loads((env.state / "audit.log").read_text().splitlines()[-1])
    assert (last["command"], last["args"]) == ("backup", {"dest": str(dest)})

    # restored into another, empty state folder: the same CA, keys as stored, no CRL
    other = encrypted_env(tmp_path / "other", init=False)
    code, out, err = other.cli("restore", str(dest))
    assert code == 0, err
    assert "left out crl.der, crl.pem" in out
    for rel in ("ca.key", "ca.cer", "passwords/alice.txt", "pending-keys/web.key"):
        assert (other.state / rel).read_bytes() == (env.state / rel).read_bytes(), rel
    assert stat.S_IMODE((other.state / "passwords" / "alice.txt").stat().st_mode) == 0o600
    assert not (other.state / "crl.der").exists()
    ca = CertificateAuthority.load(other.state, PASSPHRASE.strip().encode())
    assert ca.cert == CertificateAuthority.load(env.state, PASSPHRASE.strip().encode()).cert
    store = Store(other.settings.database_url).open()
    try:
        assert store.integrity_check() == []
    finally:
        store.close()


def test_restore_checks_everything_before_it_writes(tmp_path: Path) -> None:
    env = make_env(tmp_path / "ca")
    fill(env)
    dest = tmp_path / "backup"
    assert env.cli("backup", str(dest))[0] == 0
    # a backup never goes over something, nor into the state
    code, _, err = env.cli("backup", str(dest))
    assert code == 1 and "is not empty: a backup goes into a new or empty folder" in err
    code, _, err = env.cli("backup", str(env.state / "b"))
    assert code == 1 and "is inside the state folder" in err
    # never over a live state (a CA and its index stay as they are)
    before = sorted((p.name, p.read_bytes()) for p in env.state.iterdir() if p.is_file())
    code, _, err = env.cli("restore", str(dest))
    assert code == 1 and "is not empty" in err and "never over a CA" in err
    assert sorted((p.name, p.read_bytes()) for p in env.state.iterdir() if p.is_file()) == before

    fresh = make_env(tmp_path / "fresh", init=False)
    # a damaged file: refused with its name, nothing written
    password = dest / "state" / "passwords" / "alice.txt"
    good = password.read_bytes()
    password.write_bytes(b"tampered\n")
    code, _, err = fresh.cli("restore", str(dest))
    assert code == 1 and "is damaged, nothing was restored: state/passwords/alice.txt" in err
    assert not fresh.state.exists()
    password.write_bytes(good)
    # an interrupted backup (no manifest) is not one
    (dest / "MANIFEST.json").rename(tmp_path / "manifest")
    code, _, err = fresh.cli("restore", str(dest))
    assert code == 1 and "holds no MANIFEST.json" in err
    (tmp_path / "manifest").rename(dest / "MANIFEST.json")
    # a damaged index copy (its checksum updated too): SQLite's check refuses it
    index = dest / "index.sqlite"
    data = bytearray(index.read_bytes())
    data[4096:8192] = b"\xff" * 4096
    index.write_bytes(bytes(data))
    manifest = json.loads((dest / "MANIFEST.json").read_text())
    manifest["index"]["sha256"] = hashlib.sha256(bytes(data)).hexdigest()
    (dest / "MANIFEST.json").write_text(json.dumps(manifest))
    code, _, err = fresh.cli("restore", str(dest))
    assert code == 1 and ("integrity check" in err or "not a certdrop index" in err), err
    assert not fresh.state.exists()
