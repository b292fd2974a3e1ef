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
from ..index import membership
from ..index.mailqueue import queue_status
from ..index.store import Store, Transaction
from ..index.warned import LAST_SWEEP_META_KEY
from ..intake.inbox import watch_choice
from ..publish.apache import META_APACHE, read_companion_status
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
    companion = read_companion_status(settings.apache.companion_status)
    if settings.apache.enabled and companion is not None:
        # the root-owned companion has the last word on what Apache runs with
        apache_doc["companion"] = companion.as_json()
        if not companion.ok:
            apache_doc.update(
                last="FAILED",
                action=f"companion {companion.action}",
                at=companion.at,
                detail=companion.detail,
            )
    out: dict[str, Any] = {"crl": crl_doc, "apache": apache_doc}
    above = chain_crl_status(settings, now)
    if above:
        out["chain_crls"] = above
    return out


def apache_text(doc: dict[str, Any]) -> str:
    """The `apache` line of `certdrop status`: the publication, then the companion's word."""
    text = ", ".join(f"{k} {v}" for k, v in doc.items() if v is not None and k != "companion")
    comp = doc.get("companion")
    if comp:
        text += f"; companion {comp['last']} at {comp['at']} ({comp['action']})"
    return text


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


def ca_status(
    store: Store, conn: Transaction, settings: Settings, now: dt.datetime
) -> dict[str, Any]:
    """Every CA of the state (`cas`): the current one, the retiring ones (their last
    certificate's end) and the retired ones, from the index; the CA in the state folder
    alone until the daemon first recorded it."""
    from ..authority.lifecycle import ca_id
    from ..authority.names import subject_text
    from ..authority.rollover import ca_folder
    from ..authority.serials import serial_hex
    from ..index import cas

    rows = cas.list_cas(conn)
    docs: list[dict[str, Any]] = []
    for row in rows:
        doc: dict[str, Any] = {
            "subject": row.subject,
            "serial": row.serial,
            "key_id": row.id,
            "state": row.state,
            "not_after": row.not_after.isoformat(),
            "since": row.since.isoformat(),
        }
        if row.state == cas.RETIRING:
            until = cas.last_expiry(conn, row.id)
            doc["certificates_until"] = until.isoformat() if until is not None else None
            # its CRL, which the daemon keeps fresh in cas/<id>/ (None: none yet, unreadable)
            doc["crl_next_update"] = None
            with contextlib.suppress(OSError, ValueError):
                crl = x509.load_der_x509_crl(
                    (ca_folder(settings.state, row.id) / CRL_DER).read_bytes()
                )
                doc["crl_next_update"] = CrlFacts.of(crl).next_update.isoformat()
        docs.append(doc)
    if not docs:
        cert, _ = load_ca_certificates(settings.state)
        docs.append(
            {
                "subject": subject_text(cert.subject),
                "serial": serial_hex(cert.serial_number),
                "key_id": ca_id(cert),
                "state": cas.CURRENT,
                "not_after": cert.not_valid_after_utc.isoformat(),
                "since": None,
            }
        )
    return {"cas": docs}


def cas_text(docs: list[dict[str, Any]]) -> str:
    """The `cas` line of `certdrop status`: each CA, its state and end."""
    parts = []
    for d in docs:
        text = f"{d['state']} {d['subject']} serial {d['serial']} (until {d['not_after'][:10]}"
        if d.get("certificates_until"):
            text += f"; its last certificate ends {d['certificates_until'][:10]}"
        if d["state"] == "retiring":
            crl = d.get("crl_next_update")
            text += f"; CRL until {crl[:16].replace('T', ' ')} UTC" if crl else "; NO CRL yet"
        parts.append(text + ")")
    return "; ".join(parts)


def cluster_status(
    store: Store, conn: Transaction, settings: Settings, now: dt.datetime
) -> dict[str, Any]:
    """This host (the id in the state folder), the leader and the hosts registered in the
    index: alive (a heartbeat within a lease), silent, or stopped (or taken for dead)."""
    from ..service.cluster import read_host_id

    lease = settings.cluster.lease_seconds
    hosts = []
    for h in membership.list_hosts(conn):
        if h.retired:
            state = "stopped"
        elif (now - h.last_seen).total_seconds() > lease:
            state = "silent"
        else:
            state = "alive"
        hosts.append(
            {
                "id": h.id,
                "state": state,
                "started": h.started.isoformat(),
                "last_seen": h.last_seen.isoformat(),
                "pid": h.pid,
            }
        )
    return {
        "cluster": {
            "host": read_host_id(settings.state),
            "leader": membership.leader(conn, now),
            "hosts": hosts,
        }
    }


def cluster_text(doc: dict[str, Any]) -> str:
    """The `cluster` line: this host, the leader, the hosts and their state."""
    hosts = ", ".join(f"{h['id']} {h['state']}" for h in doc["hosts"]) or "none registered"
    return f"this host {doc['host'] or '(never ran)'}, leader {doc['leader'] or 'none'}; hosts: {hosts}"
