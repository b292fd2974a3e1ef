"""The pieces of `certdrop status` beyond the index counts: how the inbox is watched, the
mail queue, the CRL and Apache's files, read from the spool, the index and the state folder."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from typing import Any

from cryptography import x509

from ..authority.lifecycle import CHAIN_CRLS, load_ca_certificates
from ..config import Settings
from ..errors import CertdropError
from ..index.mailqueue import queue_status
from ..index.store import Store, Transaction
from ..index.warned import LAST_SWEEP_META_KEY
from ..intake.inbox import watch_choice
from ..publish.apache import META_APACHE
from ..publish.crl import CRL_DER, META_CRL_ERROR, CrlFacts
from ..publish.upstream import read_chain_crls, renew_hint


def watch_status(
    store: Store, conn: Transaction, settings: Settings, now: dt.datetime
) -> dict[str, Any]:
    """How the daemon watches the inbox with these settings: the same decision, made here
    from the settings and the folders' filesystems (the daemon is not asked)."""
    return {"watch": watch_choice(settings).as_json()}


def watch_text(doc: dict[str, Any]) -> str:
    """The `watch` line of `certdrop status`: why says the mode and the reason."""
    return str(doc["why"]) + (" (mode auto)" if doc["configured"] == "auto" else "")


def mail_status(
    store: Store, conn: Transaction, settings: Settings, now: dt.datetime
) -> dict[str, Any]:
    """The mail queue (and when the expiry sweep last ran); {} while mail was never used."""
    doc = queue_status(conn)
    if not settings.mail.enabled and not any(doc[k] for k in ("queued", "sent", "cancelled")):
        return {}
    doc["enabled"] = settings.mail.enabled
    doc["last_expiry_sweep"] = store.get_meta(conn, LAST_SWEEP_META_KEY)
    return {"mail": doc}


def publication_status(
    store: Store, conn: Transaction, settings: Settings, now: dt.datetime
) -> dict[str, Any]:
    """The CRL and Apache lines of `certdrop status` (read from the state folder and index)."""
    crl_doc: dict[str, Any] = {"number": None, "next_update": None}
    path = settings.state / CRL_DER
    try:
        crl = x509.load_der_x509_crl(path.read_bytes())
        facts = CrlFacts.of(crl)
        refresh_at = facts.next_update - dt.timedelta(days=settings.crl.refresh_before_days)
        crl_doc = {
            "number": facts.number,
            "this_update": facts.this_update.isoformat(),
            "next_update": facts.next_update.isoformat(),
            "revoked": facts.revoked,
            "state": (
                "EXPIRED"
                if now >= facts.next_update
                else "refresh due"
                if now >= refresh_at
                else "fresh"
            ),
        }
    except FileNotFoundError:
        crl_doc["state"] = "none yet (the daemon makes one at start; or run 'certdrop crl')"
    except (OSError, ValueError, x509.ExtensionNotFound, AssertionError) as exc:
        crl_doc["state"] = f"unreadable ({exc})"
    error = store.get_meta(conn, META_CRL_ERROR)
    if error:
        crl_doc["last_error"] = error
    apache_doc: dict[str, Any] = {"enabled": settings.apache.enabled}
    raw = store.get_meta(conn, META_APACHE)
    if raw:
        with contextlib.suppress(ValueError):
            last = json.loads(raw)
            apache_doc.update(
                {
                    "last": "ok" if last.get("ok") else "FAILED",
                    "action": last.get("action"),
                    "at": last.get("at"),
                    "detail": last.get("detail") or None,
                }
            )
            if last.get("warnings"):
                apache_doc["warning"] = "; ".join(last["warnings"])
    out: dict[str, Any] = {"crl": crl_doc, "apache": apache_doc}
    above = chain_crl_status(settings, now)
    if above:
        out["chain_crls"] = above
    return out


def chain_crl_status(settings: Settings, now: dt.datetime) -> list[dict[str, Any]]:
    """The CRLs of the CAs above the issuing CA (the offline root's): number, end, when
    the next one is due ([] for a CA that is its own root)."""
    try:
        _, chain = load_ca_certificates(settings.state)
    except CertdropError:
        return []
    found, _ = read_chain_crls(settings.state / CHAIN_CRLS, chain, now)
    docs: list[dict[str, Any]] = []
    for u in found:
        doc: dict[str, Any] = {"ca": u.name, "number": u.number}
        if u.crl is None or u.next_update is None or u.due_at is None:
            doc["state"] = "MISSING: Apache refuses every client; " + renew_hint(
                settings.state / CHAIN_CRLS
            )
        else:
            doc.update(
                {
                    "next_update": u.next_update.isoformat(),
                    "due": u.due_at.isoformat(),
                    "state": (
                        "EXPIRED: Apache refuses every client"
                        if now >= u.next_update
                        else "due: sign the next one now"
                        if now >= u.due_at
                        else "fresh"
                    ),
                }
            )
        docs.append(doc)
    return docs


def chain_crls_text(docs: list[dict[str, Any]]) -> str:
    """The `chain_crls` line of `certdrop status`."""
    parts = []
    for d in docs:
        if d.get("due"):
            parts.append(
                f"{d['ca']}: CRL {d['number']} until {d['next_update'][:16].replace('T', ' ')}, "
                f"next due {d['due'][:10]} ({d['state']}; certdrop root-crl --offline-root DIR)"
            )
        else:
            parts.append(f"{d['ca']}: {d['state']}")
    return "; ".join(parts)
