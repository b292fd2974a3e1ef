"""`certdrop status`: an aligned table for people, one JSON document for scripts."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from certdrop.cli import query as climod
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


# --- the CRL and Apache lines (cli/status.py) --------------------------------------------------------------
def test_publication_status_follows_the_crl_and_the_last_apache_outcome(tmp_path: Path) -> None:
    import datetime as dt
    from typing import Any

    from certdrop.authority.ca import CertificateAuthority
    from certdrop.cli.status import publication_status
    from certdrop.clock import ManualClock
    from certdrop.index.store import Store
    from certdrop.publish.apache import META_APACHE
    from certdrop.publish.crl import META_CRL_ERROR, CrlPublisher

    env = make_env(tmp_path, extra="[crl]\nvalidity_days = 7\nrefresh_before_days = 3\n")
    settings = env.settings
    t0 = dt.datetime(2034, 2, 1, tzinfo=dt.UTC)
    store = Store(settings.database_url).open()

    def doc(now: dt.datetime) -> dict[str, Any]:
        with store.begin() as conn:
            return publication_status(store, conn, settings, now)

    try:
        assert doc(t0) == {
            "crl": {
                "number": None,
                "next_update": None,
                "state": "none yet (the daemon makes one at start; or run 'certdrop crl')",
            },
            "apache": {"enabled": False},
        }
        ca = CertificateAuthority.load(settings.state)
        crl = CrlPublisher(settings.crl, settings.state, store, ca, ManualClock(t0), None)
        crl.regenerate("test")
        assert doc(t0)["crl"] == {
            "number": int(t0.timestamp()) * 10**9,  # the time it was made, in nanoseconds
            "this_update": "2034-02-01T00:00:00+00:00",
            "next_update": "2034-02-08T00:00:00+00:00",
            "revoked": 0,
            "state": "fresh",
        }
        assert doc(t0 + dt.timedelta(days=4))["crl"]["state"] == "refresh due"
        assert doc(t0 + dt.timedelta(days=7))["crl"]["state"] == "EXPIRED"
        with store.begin() as conn:
            store.set_meta(conn, META_CRL_ERROR, "2034-02-02 00:00 UTC: disk full")
            store.set_meta(
                conn,
                META_APACHE,
                json.dumps(
                    {
                        "at": "2034-02-02T00:00:00+00:00",
                        "ok": False,
                        "action": "configtest-failed",
                        "detail": "",
                        "warnings": ["first", "second"],
                    }
                ),
            )
        crl.der_path.write_bytes(b"garbage")
        now_doc = doc(t0)
        assert now_doc["crl"]["state"].startswith("unreadable (")
        assert now_doc["crl"]["last_error"] == "2034-02-02 00:00 UTC: disk full"
        assert now_doc["apache"] == {
            "enabled": False,
            "last": "FAILED",
            "action": "configtest-failed",
            "at": "2034-02-02T00:00:00+00:00",
            "detail": None,
            "warning": "first; second",
        }
    finally:
        store.close()


# --- the watch line (cli/status.py): decided from the settings and the folder, not asked ------------
def test_status_shows_the_watch_mode_without_a_daemon(tmp_path: Path) -> None:
    env = make_env(tmp_path, replace={"[watch]\n": '[watch]\nmode = "polling"\n'})
    code, out, err = env.cli("status", "--json")
    assert code == 0, err
    watch = json.loads(out)["watch"]
    assert (watch["mode"], watch["configured"]) == ("polling", "polling")
    assert watch["why"].startswith("polling every 0.2 s, as configured; inbox on ")
    [fs] = watch["filesystems"]
    assert fs["folder"] == str(env.inbox) and fs["type"] and "error" not in fs
    code, out, err = env.cli("status")
    [line] = [ln for ln in out.splitlines() if ln.startswith("watch ")]
    assert line.split(None, 1)[1] == watch["why"]  # "(mode auto)" only when auto chose

    env.write_config()  # mode = "auto" again
    code, out, err = env.cli("status")
    [line] = [ln for ln in out.splitlines() if ln.startswith("watch ")]
    assert line.endswith(" (mode auto)") and "inbox on " in line
