"""`certdrop status`: an aligned table for people, one JSON document for scripts."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from certdrop.cli import app as climod
from certdrop.cli.status import mail_status
from certdrop.index.store import Store
from certdrop.notify.alerts import queue_admin_alert
from conftest import DaemonThread, make_env, openssl_csr, wait_result
from mailpeer import mail_config


def _columns_aligned(lines: list[str], headers: list[str]) -> None:
    """Every row's cell starts where its column header starts."""
    head = lines[0]
    starts = [head.index(h) for h in headers]
    assert starts == sorted(starts)
    for row in lines[1:]:
        for start in starts[1:]:
            assert row[start - 2 : start] == "  " and row[start] != " ", (row, start)


def test_status_table_and_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = make_env(tmp_path)
    d = DaemonThread(env).start()
    try:
        req, _ = openssl_csr(tmp_path / "u", "alice", subject="/O=MyOrg/CN=Alice Example")
        env.drop(req)
        assert wait_result(env, "alice") == "outbox"
        web, _ = openssl_csr(
            tmp_path / "u",
            "web-frontend",
            subject="/CN=www.example.org",
            kind="ec:P-256",
            addext=["subjectAltName=DNS:www.example.org"],
        )
        env.drop(web, profile="server")
        assert wait_result(env, "web-frontend") == "pending"

        monkeypatch.setattr(
            climod, "STATUS_EXTRAS", [lambda store, conn, s, now: {"crl": {"number": 7}}]
        )
        code, out, err = env.cli("status", "--days", "400")
        assert code == 0, err
        lines = out.splitlines()
        assert lines[0].startswith("CA") and "CN=Test CA" in lines[0]
        assert lines[1].strip().startswith("ec-secp256r1, valid until")
        labels = [line.split()[0] for line in lines[:7] if line and not line.startswith(" ")]
        assert labels[:5] == ["CA", "daemon", "index", "requests", "crl"]
        # the values form one column
        col = lines[0].index("CN=Test CA")
        for line in lines[1:6]:
            assert line[col - 2 : col] == "  " and line[col] != " ", line
        assert "running (pid" in out
        assert "total 1 (valid 1, expired 0, revoked 0, superseded 0)" in out
        assert "crl       number 7" in out

        i = lines.index("PENDING APPROVAL (1)")
        _columns_aligned(lines[i + 1 : i + 3], ["NAME", "PROFILE", "OWNER", "SINCE", "SUBJECT"])
        assert lines[i + 2].startswith("web-frontend  server")
        assert lines[i + 2].endswith("CN=www.example.org")

        j = lines.index("EXPIRING WITHIN 400 DAYS (1)")
        _columns_aligned(
            lines[j + 1 : j + 3],
            ["SERIAL", "STATUS", "NOT AFTER", "PROFILE", "REQUEST", "SUBJECT"],
        )
        assert " valid " in lines[j + 2] and " alice " in lines[j + 2]

        code, out, _ = env.cli("status")
        assert "EXPIRING WITHIN 30 DAYS: none" in out

        code, out, _ = env.cli("status", "--json")
        doc = json.loads(out)
        assert doc["certificates"]["valid"] == 1
        assert [p["name"] for p in doc["pending"]] == ["web-frontend"]
        assert doc["crl"] == {"number": 7}
    finally:
        d.stop()


# --- the mail part ------------------------------------------------------------------------------------
def test_the_mail_part_of_status(tmp_path: Path) -> None:
    env = make_env(tmp_path, extra=mail_config(25, admin="ops@example.org"))
    s = env.settings
    now = dt.datetime.now(dt.UTC)
    off = s.model_copy(update={"mail": s.mail.model_copy(update={"enabled": False})})
    store = Store(s.database_url).open()
    try:
        with store.begin() as conn:
            assert mail_status(store, conn, off, now) == {}  # mail never used: not shown
            assert mail_status(store, conn, s, now) == {
                "mail": {
                    "queued": 0,
                    "failing": 0,
                    "sent": 0,
                    "cancelled": 0,
                    "last_error": None,
                    "enabled": True,
                    "last_expiry_sweep": None,
                }
            }
        assert queue_admin_alert(store, s.mail, "something", "body\n", now)
        with store.begin() as conn:
            store.set_meta(conn, "expiry_last_sweep", "2030-05-01T12:00:00+00:00")
            doc = mail_status(store, conn, off, now)["mail"]  # switched off, mail still queued
        assert (doc["queued"], doc["enabled"]) == (1, False)
        assert doc["last_expiry_sweep"] == "2030-05-01T12:00:00+00:00"
    finally:
        store.close()
    code, out, err = env.cli("status", "--json")
    assert code == 0, err
    mail = json.loads(out)["mail"]
    assert (mail["queued"], mail["enabled"]) == (1, True)
    code, out, err = env.cli("status")
    [line] = [line for line in out.splitlines() if line.startswith("mail ")]
    assert line.split(None, 1)[1] == (
        "queued 1, failing 0, sent 0, cancelled 0, enabled True, "
        "last_expiry_sweep 2030-05-01T12:00:00+00:00"
    )
