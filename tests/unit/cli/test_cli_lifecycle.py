"""`certdrop init --offline-root`, `certdrop root-crl` and what `status` says of the root's
CRL (cli/lifecycle.py, cli/status.py)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from cryptography import x509

from certdrop.clock import ManualClock
from conftest import CAEnv, make_env

PASS = "correct horse battery staple\n"


def two_tier_env(tmp_path: Path, extra: str = "", clock: ManualClock | None = None) -> CAEnv:
    env = make_env(tmp_path / "ca", init=False, extra=extra)
    if clock is not None:
        env.clock = clock
    (tmp_path / "root-pass").write_text(PASS)
    code, out, err = env.cli(
        "init",
        "--offline-root", str(tmp_path / "media"),
        "--root-passphrase-file", str(tmp_path / "root-pass"),
    )  # fmt: skip
    assert code == 0, err
    assert f"created the offline root CN=Test CA Root,O=MyOrg,C=BE in {tmp_path / 'media'}" in out
    assert "created the issuing CA CN=Test CA,O=MyOrg,C=BE (ec-p256)" in out
    assert "the root's first CRL: number " in out
    return env


def _status(env: CAEnv) -> dict[str, object]:
    code, out, err = env.cli("status", "--json")
    assert code == 0, err
    doc: dict[str, object] = json.loads(out)
    return doc


def test_init_and_root_crl_and_what_status_says(tmp_path: Path) -> None:
    t0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    clock = ManualClock(t0)
    env = two_tier_env(tmp_path, clock=clock)
    [above] = _status(env)["chain_crls"]  # type: ignore[misc]
    assert above["ca"] == "CN=Test CA Root,O=MyOrg,C=BE" and above["state"] == "fresh"
    assert above["next_update"] == (t0 + dt.timedelta(days=365)).isoformat()
    assert above["due"] == (t0 + dt.timedelta(days=335)).isoformat()
    code, out, _ = env.cli("status")
    line = next(ln for ln in out.splitlines() if ln.startswith("chain_crls"))
    assert "CN=Test CA Root,O=MyOrg,C=BE: CRL " in line and "next due 2026-12-02 (fresh" in line

    clock.set(t0 + dt.timedelta(days=340))
    assert _status(env)["chain_crls"][0]["state"] == "due: sign the next one now"  # type: ignore[index]
    first = above["number"]
    args = ["--offline-root", str(tmp_path / "media")]
    code, out, err = env.cli(
        "root-crl", *args, "--root-passphrase-file", str(tmp_path / "root-pass")
    )
    assert code == 0, err
    assert "signed the root's CRL" in out and "the next root CRL is due by 2027-11-07" in out
    assert "Apache publication is off" in out  # no daemon: the CLI ran the publication itself
    [above] = _status(env)["chain_crls"]  # type: ignore[misc]
    assert above["state"] == "fresh" and above["number"] > first  # type: ignore[operator]

    clock.set(t0 + dt.timedelta(days=800))
    assert _status(env)["chain_crls"][0]["state"] == "EXPIRED: Apache refuses every client"  # type: ignore[index]
    (env.state / "chain-crls" / "root.crl").unlink()
    assert _status(env)["chain_crls"][0]["state"].startswith("MISSING: ")  # type: ignore[index]


def test_root_crl_refusals(tmp_path: Path) -> None:
    env = two_tier_env(tmp_path)
    media = str(tmp_path / "media")
    pass_file = str(tmp_path / "root-pass")
    # no passphrase and no terminal to ask on
    code, _, err = env.cli("root-crl", "--offline-root", media)
    assert code == 1 and "give --root-passphrase-file F" in err
    (tmp_path / "wrong").write_text("guess\n")
    code, _, err = env.cli(
        "root-crl", "--offline-root", media, "--root-passphrase-file", str(tmp_path / "wrong")
    )
    assert code == 1 and "wrong passphrase" in err
    # the issuing CA is not revoked behind the operator's back
    serial = format(x509.load_pem_x509_certificate(env.ca_cert.read_bytes()).serial_number, "X")
    code, _, err = env.cli(
        "root-crl",
        "--offline-root",
        media,
        "--root-passphrase-file",
        pass_file,
        "--revoke-ca",
        serial,
    )
    assert code == 1 and "is the issuing CA of" in err and "roll over first" in err
    # another root is not this CA's
    other = make_env(tmp_path / "other", init=False)
    code, _, err = other.cli(
        "init", "--offline-root", str(tmp_path / "media2"), "--root-passphrase-file", pass_file
    )
    assert code == 0, err
    code, _, err = env.cli(
        "root-crl", "--offline-root", str(tmp_path / "media2"), "--root-passphrase-file", pass_file
    )
    assert code == 1 and "is not above the CA in" in err
    # init over a CA, or with options that do not go together
    code, _, err = env.cli("init", "--offline-root", media, "--root-passphrase-file", pass_file)
    assert code == 1 and "never overwrites a CA" in err
    code, _, err = env.cli("init", "--root-passphrase-file", pass_file)
    assert code != 0 and "--root-passphrase-file goes with --offline-root" in err
