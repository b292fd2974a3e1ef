"""`certdrop revoke REF` through the CLI by CN and e-mail address: a running daemon
carries it out, an ambiguous REF is refused with the list and revokes nothing."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import OPENSSL, DaemonThread, make_env, run
from lookup_kit import issue_people


def test_revoke_by_cn_or_e_mail_and_an_ambiguous_address_refused(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    serials = issue_people(env, tmp_path)
    d = DaemonThread(env).start()
    try:
        # two holders share the address: refused in one line listing both, nothing revoked
        code, out, err = env.cli("revoke", "TEAM@example.org", "--reason", "keyCompromise")
        assert (code, out) == (1, "")
        assert err.startswith(
            "'TEAM@example.org' matches 2 certificates that are still valid; revoke one at a "
            "time by serial: "
        )
        for name in ("team1", "team2"):
            assert f"{serials[name]} (valid, until " in err
        assert "CN=Team One" in err and "CN=Team Two" in err
        assert len(err.splitlines()) == 1
        code, out, _ = env.cli("list", "--json", "--status", "revoked")
        assert json.loads(out)["certificates"] == []

        # a CN in another case, and a subjectAltName address
        code, out, err = env.cli("revoke", "BOB BUILDER", "--reason", "keyCompromise")
        assert code == 0, err
        assert out.startswith(f"revoked {serials['bob']} (CN=Bob Builder,O=MyOrg)")
        code, out, err = env.cli("revoke", "Alice@EXAMPLE.org")
        assert code == 0, err
        assert out.startswith(f"revoked {serials['alice']} ")
        code, _, err = env.cli("revoke", "b.builder@example.org")
        assert (
            code == 1
            and err.startswith(f"certificate {serials['bob']} ")
            and ("is already revoked" in err)
        )
    finally:
        d.stop()
    crl = run([OPENSSL, "crl", "-in", str(env.state / "crl.pem"), "-noout", "-text"]).stdout
    listed = {  # openssl prints an even number of hex digits: compare the numbers
        int(line.split(":", 1)[1].strip(), 16)
        for line in crl.splitlines()
        if line.strip().startswith("Serial Number:")
    }
    assert listed == {int(serials["alice"], 16), int(serials["bob"], 16)}
    code, out, _ = env.cli("list", "--json", "--search", "team")
    assert {c["status"] for c in json.loads(out)["certificates"]} == {"valid"}
