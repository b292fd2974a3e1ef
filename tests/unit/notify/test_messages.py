"""The texts of expiry warnings and alerts: what they say, and how to renew exactly."""

from __future__ import annotations

import dataclasses
import datetime as dt
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest

from certdrop.index.pending import PendingRecord
from certdrop.index.store import Store
from certdrop.issue.outcomes import reason_text
from certdrop.notify.expiry import SweepConfig
from certdrop.notify.messages import (
    admin_digest,
    ca_expiry,
    crl_overdue,
    days_text,
    holder_warning,
    pending_request,
    renewal_instructions,
    requester_approved,
    requester_denied,
    requester_pending,
    requester_refused,
    requester_revoked,
    utc_text,
)
from conftest import make_env
from mailpeer import mail_config
from notify_helpers import T0, index_certificate

END = T0 + dt.timedelta(days=10)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(f"sqlite:///{tmp_path / 'index.sqlite'}").open()
    yield s
    s.close()


@pytest.fixture
def cfg(tmp_path: Path) -> SweepConfig:
    env = make_env(tmp_path / "ca", init=False, extra=mail_config(25))
    return SweepConfig.from_settings(env.settings)


def test_days_and_times() -> None:
    assert days_text(dt.timedelta(hours=23)) == "in less than a day"
    assert days_text(dt.timedelta(days=1, hours=5)) == "in 1 day"
    assert days_text(dt.timedelta(days=12)) == "in 12 days"
    later = dt.datetime(2030, 5, 1, 14, 0, 5, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert utc_text(later) == "2030-05-01 12:00:05 UTC"


def test_the_holder_warning(store: Store, cfg: SweepConfig) -> None:
    rec = index_certificate(store, "Alice Example", "alice@example.org", END, request_name="alice")
    subject, body = holder_warning(rec, 30, cfg, T0)
    assert subject == f"your certificate Alice Example expires in 10 days ({END:%Y-%m-%d})"
    assert body.startswith("Hello Alice Example,\n\nyour certificate expires in 10 days, on ")
    assert f"    Serial:       {rec.serial}\n" in body
    assert f"    Valid until:  {utc_text(END)} (notAfter)\n" in body
    assert "    Days left:    10\n" in body
    assert "once for each of these moments before the end: 30 days, 7 days, 1 day." in body
    assert renewal_instructions(rec, cfg, T0) in body


def test_renewal_with_a_new_key_made_by_openssl(store: Store, cfg: SweepConfig) -> None:
    rec = index_certificate(
        store, "Alice/Ops", "alice@example.org", END, request_name="alice", dns=["a.example.org"]
    )
    text = renewal_instructions(rec, cfg, END - dt.timedelta(days=40))
    assert f"    {cfg.inbox / 'alice.req'}\n" in text
    # client: renew_before_days = 30, unique CN
    assert f"Renewal opens on {utc_text(END - dt.timedelta(days=30))} (30 days before" in text
    assert "a request dropped before then is refused while this certificate is valid" in text
    [cmd] = [line.strip() for line in text.splitlines() if line.strip().startswith("openssl req")]
    args = shlex.split(cmd)
    assert args[args.index("-newkey") + 1] == "ec"
    assert args[args.index("-pkeyopt") + 1] == "ec_paramgen_curve:P-256"
    assert args[args.index("-subj") + 1] == "/CN=Alice\\/Ops/emailAddress=alice@example.org"
    assert args[args.index("-addext") + 1] == "subjectAltName=DNS:a.example.org"
    assert f"cp alice.req {cfg.inbox}/" in text
    assert "You can renew now." in renewal_instructions(rec, cfg, END - dt.timedelta(days=29))


def test_renewal_of_a_key_made_by_certdrop(store: Store, cfg: SweepConfig) -> None:
    rec = index_certificate(
        store, "Erin Ünal", "erin@example.org", END, request_name="erin", key_generated=True
    )
    text = renewal_instructions(rec, cfg, T0)
    assert "Your key was made by certdrop, so ask for a new one the same way: erin.req" in text
    assert '    [subject]\n    CN = "Erin Ünal"\n    emailAddress = "erin@example.org"\n' in text
    assert "[san]" not in text
    assert "erin.p12 comes by a separate mail." in text
    by_hand = dataclasses.replace(cfg, password_by_mail=False)
    assert "erin.p12 comes from the CA operator." in renewal_instructions(rec, by_hand, T0)


def test_renewal_goes_to_the_folder_of_the_profile(store: Store, cfg: SweepConfig) -> None:
    web = index_certificate(
        store, "www", "", END, serial=0x0B, profile="server", request_name="web"
    )
    text = renewal_instructions(web, cfg, END - dt.timedelta(days=20))
    assert f"    {cfg.inbox / 'server' / 'web.req'}\n" in text
    assert "gets a second certificate that does not replace this one" in text  # CN not unique
    gone = index_certificate(
        store, "Old", "", END, serial=0x0C, profile="retired", request_name="../x"
    )
    text = renewal_instructions(gone, cfg, T0)
    assert f"    {cfg.inbox / 'Old.req'}\n" in text  # an unsafe request name is not reused
    assert "profile 'retired' is not configured any more" in text
    assert "the default profile 'client'" in text


def test_the_admin_digest(store: Store, cfg: SweepConfig) -> None:
    late = index_certificate(store, "Bob", "bob@example.org", END, serial=0x0B)
    soon = index_certificate(store, "Kiosk", "", T0 + dt.timedelta(hours=5), serial=0x0C)
    subject, body = admin_digest([(late, 30, False), (soon, 1, False)], cfg, T0)
    assert subject == "2 certificates expiring soon"
    assert body.startswith("2 certificates crossed an expiry warning threshold (30, 7, 1 days):")
    assert body.index("CN=Kiosk") < body.index("CN=Bob")
    assert "in less than a day (1-day warning)" in body
    assert "holder not warned ([expiry] notify_holder = false); e-mail bob@example.org" in body
    assert "NO e-mail address in the certificate" in body
    subject, body = admin_digest([(late, 30, True)], cfg, T0)
    assert subject == "1 certificate expiring soon"
    assert "holder warned at bob@example.org" in body


def test_the_ca_and_crl_alerts() -> None:
    subject, body = ca_expiry("CN=Test CA", "0A", T0 + dt.timedelta(days=30), T0)
    assert subject == "the CA certificate CN=Test CA expires in 30 days"
    assert body.startswith("The CA certificate\n\n    CN=Test CA\n    serial 0A\n\nexpires in 30")
    assert "Roll the CA over before that date: 'certdrop rollover'" in body
    subject, body = ca_expiry("CN=Test CA", "0A", T0 - dt.timedelta(days=1), T0)
    assert subject == "the CA certificate CN=Test CA has EXPIRED"
    assert f"expired on {utc_text(T0 - dt.timedelta(days=1))}." in body

    subject, body = crl_overdue("CN=Test CA", "7", T0 + dt.timedelta(hours=30), 3, T0)
    assert subject == "the CRL of CN=Test CA was not refreshed; it expires in 1 day"
    assert body.startswith("The current CRL (number 7) of\n\n    CN=Test CA\n\nits nextUpdate is")
    assert "certdrop refreshes the CRL 3 days before its nextUpdate" in body
    subject, body = crl_overdue("CN=Test CA", "7", T0, 1.5, T0)
    assert subject == "the CRL of CN=Test CA has EXPIRED: Apache refuses every client certificate"
    assert f"its nextUpdate was {utc_text(T0)}." in body
    assert "refreshes the CRL 1.5 days before" in body


def test_the_pending_request_alert() -> None:
    rec = PendingRecord(
        name="web",
        profile="server",
        fingerprint="f" * 64,
        owner="",
        owner_uid=None,
        received_at=T0,
        subject="CN=www.example.org",
        decision=None,
        decision_reason=None,
    )
    subject, body = pending_request(rec)
    assert subject == "request web waits for approval (server)"
    assert "    owner:     ?\n" in body
    assert "    subject:   CN=www.example.org\n" in body
    assert f"    received:  {utc_text(T0)}\n" in body


# --- to requesters ----------------------------------------------------------------------------
SPOOL = Path("/srv/spool")


def test_the_refusal_gives_the_reason_file_as_it_is_and_what_to_do() -> None:
    reason = reason_text("alice", "client", ["CN is missing", "the key is too small"])
    subject, body = requester_refused(
        "alice", "client", reason, SPOOL / "inbox", SPOOL / "rejected", ["a remark"]
    )
    assert subject == "your request alice.req was refused"
    assert "\n\n" + reason + "\n" in body  # exactly the text of rejected/alice.reason
    assert "as written in\n\n    /srv/spool/rejected/alice.reason\n" in body
    assert "Please note: a remark\n" in body
    assert "as a new file into\n\n    /srv/spool/inbox/\n" in body
    assert "moved to\n\n    /srv/spool/rejected/alice.req\n" in body


def test_the_waiting_mail_says_who_decides_and_what_comes_next() -> None:
    subject, body = requester_pending(
        "web",
        "server",
        "CN=www.example.org",
        T0,
        SPOOL / "pending",
        SPOOL / "outbox",
        ["the dropped key was deleted"],
    )
    assert subject == "your request web.req waits for approval (server)"
    assert "    Subject:   CN=www.example.org\n" in body
    assert f"    Received:  {utc_text(T0)}\n" in body
    assert "only after the CA operator has\napproved the request" in body
    assert "    /srv/spool/pending/web.req\n" in body
    assert "Please note: the dropped key was deleted\n" in body
    assert "certdrop issues the certificate into the outbox,\n\n    /srv/spool/outbox/\n" in body
    assert "If the operator denies it, you get a\nmail with the operator's reason." in body


def test_the_approved_mail_lists_the_delivered_files_and_never_a_password() -> None:
    files = [SPOOL / "outbox" / "web-2.p12", SPOOL / "outbox" / "web-2.cer"]  # names as given
    _, by_mail = requester_approved(
        "web", "server", "CN=www.example.org", "0A1B", END, files, password_by_mail=True
    )
    assert "    Serial:       0A1B\n" in by_mail
    assert f"    Valid until:  {utc_text(END)}\n" in by_mail
    assert "    /srv/spool/outbox/web-2.p12   PKCS#12 bundle: your key, the certificate" in by_mail
    assert "    /srv/spool/outbox/web-2.cer   the certificate (PEM)\n" in by_mail
    assert "The password of web-2.p12 is not in this mail: it comes in a separate mail." in (
        by_mail
    )
    subject, by_operator = requester_approved(
        "web", "server", "CN=www", "0A1B", END, files, password_by_mail=False
    )
    assert subject == "your request web.req was approved: certificate 0A1B issued"
    assert "the CA operator gives it to you\nby another channel." in by_operator
    _, no_p12 = requester_approved(
        "web", "server", "CN=www", "0A1B", END, files[1:], password_by_mail=True
    )
    assert "password" not in no_p12 and "p12" not in no_p12


def test_the_denial_gives_the_operators_reason() -> None:
    subject, body = requester_denied(
        "web", "server", "not ours\nask IT", SPOOL / "inbox" / "server", SPOOL / "rejected"
    )
    assert subject == "your request web.req was denied"
    assert "for this reason:\n\n    not ours\n    ask IT\n" in body
    assert "No certificate was issued." in body
    assert "drop it into\n\n    /srv/spool/inbox/server/\n" in body
    assert "(none given)" in requester_denied("w", "s", " ", SPOOL, SPOOL)[1]


def test_the_revocation_says_when_why_and_how_to_start_again(store: Store) -> None:
    rec = index_certificate(store, "Alice", "alice@example.org", END, request_name="alice")
    when = T0 + dt.timedelta(hours=1)
    subject, body = requester_revoked(
        rec, "keyCompromise", when, SPOOL / "inbox", password_by_mail=True
    )
    assert subject == f"your certificate Alice (serial {rec.serial}) was revoked"
    assert body.startswith("Hello Alice,\n\nthe CA operator revoked your certificate:\n")
    assert f"    Serial:   {rec.serial}\n    Reason:   keyCompromise\n" in body
    assert f"    Revoked:  {utc_text(when)}\n" in body
    assert "never use that key again" in body
    assert "make a NEW key" in body
    assert "openssl req -new -utf8 -newkey ec" in body
    assert "cp alice.req /srv/spool/inbox/" in body
    _, plain = requester_revoked(rec, "superseded", when, SPOOL / "inbox", password_by_mail=True)
    assert "never use that key again" not in plain
    made = index_certificate(
        store, "Bob", "", END, serial=0x0B, request_name="bob", key_generated=True
    )
    _, gen = requester_revoked(made, "unspecified", when, SPOOL / "inbox", password_by_mail=False)
    assert gen.startswith("Hello Bob,")
    assert '    [subject]\n    CN = "Bob"\n' in gen
    assert "bob.p12 comes from the CA operator." in gen
