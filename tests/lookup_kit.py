"""Certificates for the lookup tests (`show`, `revoke`, `list --search`): people whose
requests, made with openssl, a running daemon issued; two of them share an address."""

from __future__ import annotations

from pathlib import Path

from conftest import CAEnv, DaemonThread, load_cert, openssl_csr, wait_result

PEOPLE = {
    "alice": ("/O=MyOrg/emailAddress=Alice@Example.org/CN=Alice Example", []),
    "bob": (
        "/O=MyOrg/CN=Bob Builder",
        ["subjectAltName=email:bob@example.org,email:B.Builder@example.org"],
    ),
    "team1": ("/O=MyOrg/emailAddress=team@example.org/CN=Team One", []),
    "team2": ("/O=MyOrg/emailAddress=team@example.org/CN=Team Two", []),
}


def issue_people(env: CAEnv, tmp: Path) -> dict[str, str]:
    """Each of PEOPLE issued by a running daemon; their serials (hex) by request name."""
    d = DaemonThread(env).start()
    try:
        for name, (subject, addext) in PEOPLE.items():
            req, _ = openssl_csr(tmp / "users", name, subject, kind="ec:prime256v1", addext=addext)
            env.drop(req)
        for name in PEOPLE:
            assert wait_result(env, name) == "outbox"
    finally:
        d.stop()
    return {name: f"{load_cert(env.outbox / f'{name}.cer').serial_number:X}" for name in PEOPLE}
