"""The policy engine: pure functions from (request, profile, context, now) to a decision.

No I/O happens here. The Decider (issue/decide.py) gathers what the policy needs to know
about the world (who owns the dropped file, which valid certificates share a unique
attribute, when the CA itself expires) into a `PolicyContext`.

Every violation is reported, as a sentence the requester can act on.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ..config import Profile, SubjectRule
from ..intake.request import WEAK_HASHES, ParsedRequest, has_control_characters

# upper bounds from RFC 5280 Appendix A (ub-*) and PKCS#9
MAX_LENGTHS = {
    "CN": 64,
    "O": 64,
    "OU": 64,
    "L": 128,
    "ST": 128,
    "emailAddress": 255,
    "serialNumber": 64,
    "title": 64,
    "GN": 64,
    "SN": 64,
    "UID": 64,
    "DC": 63,
    "street": 128,
    "postalCode": 40,
}
REPEATABLE = frozenset({"OU", "DC", "street"})
MAX_REPEATED = 10  # values of one repeatable attribute
MAX_SAN_ENTRIES = 100  # e-mail addresses and DNS names together
# attributes whose upper bound is checked in UTF-8 bytes, as the certificate library does
BYTE_LIMITED = frozenset({"CN"})
# PrintableString (X.680): the only characters a serialNumber can carry
_PRINTABLE = re.compile(r"[A-Za-z0-9 '()+,\-./:=?]+")
BACKDATE = dt.timedelta(minutes=5)

_EMAIL = re.compile(
    r"(?P<local>[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-]+(\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-]+)*)"
    r"@(?P<domain>([A-Za-z0-9]([A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]([A-Za-z0-9\-]{0,61}[A-Za-z0-9])?)"
)
_DNS = re.compile(
    r"(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9\-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]([A-Za-z0-9\-]{0,61}[A-Za-z0-9])?"
)


@dataclass(frozen=True)
class ExistingCert:
    serial: str
    not_after: dt.datetime
    profile: str
    subject: str


@dataclass(frozen=True)
class PolicyContext:
    now: dt.datetime
    ca_not_after: dt.datetime
    owner: str | None = None  # Unix user name owning the dropped file, if known
    # (attribute, value.casefold()) -> valid certificates that carry it
    existing: Mapping[tuple[str, str], Sequence[ExistingCert]] = field(default_factory=dict)
    approved: bool = False  # an operator approved this request (manual profiles)


@dataclass(frozen=True)
class Decision:
    accepted: bool
    reasons: tuple[str, ...]
    subject: tuple[tuple[str, str], ...] = ()
    emails: tuple[str, ...] = ()
    dns_names: tuple[str, ...] = ()
    not_before: dt.datetime | None = None
    not_after: dt.datetime | None = None
    supersedes: tuple[str, ...] = ()
    needs_approval: bool = False
    notes: tuple[str, ...] = ()


def unique_keys(req: ParsedRequest, profile: Profile) -> list[tuple[str, str]]:
    """The (attribute, folded value) pairs the index is asked about for this request."""
    keys: list[tuple[str, str]] = []
    for name, value in req.subject:
        rule = profile.subject.get(name)
        if (rule is not None and rule.unique) or name == "CN":
            keys.append((name, value.casefold()))
    return keys


def _email_ok(addr: str) -> bool:
    return addr.isascii() and len(addr) <= 255 and _EMAIL.fullmatch(addr) is not None


def _email_domain(addr: str) -> str:
    return addr.rsplit("@", 1)[-1].lower()


def _check_rule(name: str, values: list[str], rule: SubjectRule, reasons: list[str]) -> None:
    if rule.forbidden and values:
        reasons.append(f"the subject must not contain {name}; remove it from the request")
        return
    if rule.required and not values:
        example = f" (for example {name}={rule.equals})" if rule.equals else ""
        reasons.append(f"the subject must contain {name}{example}")
        return
    for value in values:
        if rule.equals is not None and value != rule.equals:
            reasons.append(f"{name} must be {rule.equals!r}, not {value!r}")
        if rule.one_of is not None and value not in rule.one_of:
            allowed = ", ".join(repr(v) for v in rule.one_of)
            reasons.append(f"{name} {value!r} is not allowed; it must be one of {allowed}")
        if rule.pattern is not None and re.fullmatch(rule.pattern, value) is None:
            reasons.append(f"{name} {value!r} does not match the required pattern {rule.pattern!r}")
        if rule.domains is not None:
            if not _email_ok(value) or _email_domain(value) not in rule.domains:
                reasons.append(f"{name} {value!r} must be an address at {_join_or(rule.domains)}")


def _join_or(items: Sequence[str]) -> str:
    items = list(items)
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]


def _fmt_day(when: dt.datetime) -> str:
    return when.strftime("%Y-%m-%d %H:%M UTC")


def evaluate(req: ParsedRequest, profile: Profile, ctx: PolicyContext) -> Decision:
    """Decide what `req` gets under `profile`; every violation becomes a reason."""
    reasons: list[str] = []
    notes: list[str] = []
    now = ctx.now

    # --- the key and the request's own signature ---------------------------------------
    key = req.key
    if key.kind == "rsa":
        if key.bits < profile.rsa_min_bits:
            reasons.append(
                f"the RSA key has {key.bits} bits; at least {profile.rsa_min_bits} are required "
                f"(openssl genrsa -out NAME.key {max(profile.rsa_min_bits, 2048)})"
            )
        elif key.bits > profile.rsa_max_bits:
            reasons.append(
                f"the RSA key has {key.bits} bits; at most {profile.rsa_max_bits} are accepted"
            )
        if key.exponent < 65537 or key.exponent % 2 == 0:
            reasons.append(f"the RSA public exponent {key.exponent} is unsafe; use 65537")
    elif key.kind == "ec":
        if key.curve not in profile.ec_curves:
            reasons.append(
                f"the EC curve {key.curve} is not allowed; use {_join_or(profile.ec_curves)}"
                if profile.ec_curves
                else "EC keys are not accepted by this profile; use an RSA key"
            )
    elif key.kind == "ed25519":
        if not profile.allow_ed25519:
            reasons.append(
                "Ed25519 keys are not accepted by this profile; use an EC P-256 or RSA key"
            )
    elif key.kind == "generated":
        pass
    else:
        reasons.append(f"{key.describe()} keys are not accepted; use an EC P-256 or RSA key")
    if req.signature_hash in WEAK_HASHES:
        reasons.append(
            f"the request is signed with {req.signature_hash.upper()}, which is no longer safe; "
            "make it with SHA-256 (openssl req -new -sha256 ...)"
        )

    # --- the subject ----------------------------------------------------------------------
    if req.multi_valued_rdn:
        reasons.append(
            "the subject has a multi-valued RDN (several attributes joined by '+'); "
            "give each attribute on its own"
        )
    counts: dict[str, int] = {}
    for name, value in req.subject:
        counts[name] = counts.get(name, 0) + 1
        if name not in MAX_LENGTHS and name != "C":
            reasons.append(f"the subject attribute {name} is not allowed")
            continue
        if has_control_characters(value):
            reasons.append(
                f"{name} contains control or invisible formatting characters "
                "(such as NUL or right-to-left marks); use plain text"
            )
            continue
        if not value.strip():
            reasons.append(f"{name} is empty")
        elif value != value.strip():
            reasons.append(f"{name} {value!r} has leading or trailing spaces")
        if name == "C":
            if not re.fullmatch(r"[A-Z]{2}", value):
                reasons.append(
                    f"C {value!r} must be a two-letter country code in capitals, like BE"
                )
        elif len(value) > MAX_LENGTHS[name]:
            reasons.append(
                f"{name} is {len(value)} characters long; at most {MAX_LENGTHS[name]} are allowed"
            )
        elif name in BYTE_LIMITED and len(value.encode("utf-8")) > MAX_LENGTHS[name]:
            reasons.append(
                f"{name} is {len(value.encode('utf-8'))} bytes long in UTF-8 ({len(value)} "
                f"characters); at most {MAX_LENGTHS[name]} bytes are allowed, so shorten it"
            )
        if name == "serialNumber" and not _PRINTABLE.fullmatch(value):
            reasons.append(
                f"serialNumber {value!r} may only contain ASCII letters, digits, spaces and "
                "' ( ) + , - . / : = ?"
            )
        if name == "emailAddress" and not _email_ok(value):
            reasons.append(f"emailAddress {value!r} is not a valid e-mail address")
        if name == "DC" and not re.fullmatch(r"[A-Za-z0-9\-]{1,63}", value):
            reasons.append(f"DC {value!r} must be a single DNS label")
    for name, n in counts.items():
        if n > 1 and name not in REPEATABLE:
            reasons.append(f"the subject has {n} {name} attributes; give exactly one")
        elif n > MAX_REPEATED:
            reasons.append(
                f"the subject has {n} {name} attributes; at most {MAX_REPEATED} are allowed"
            )
    for name, rule in profile.subject.items():
        _check_rule(name, req.attribute_values(name), rule, reasons)
    if not req.subject and not req.emails and not req.san_dns:
        reasons.append("the request has an empty subject; give at least a CN")

    # --- e-mail addresses (subject and SAN) -----------------------------------------------
    san_total = len(req.san_emails) + len(req.san_dns) + len(req.san_other)
    if san_total > MAX_SAN_ENTRIES:
        reasons.append(
            f"the subjectAltName has {san_total} entries; at most {MAX_SAN_ENTRIES} are allowed"
        )
    emails = req.emails
    for addr in req.san_emails:
        if has_control_characters(addr) or not _email_ok(addr):
            reasons.append(f"the subjectAltName e-mail {addr!r} is not a valid e-mail address")
    if profile.email_domains:
        for addr in emails:
            if _email_ok(addr) and _email_domain(addr) not in profile.email_domains:
                reasons.append(
                    f"the e-mail address {addr!r} is not at an allowed domain; "
                    f"allowed: {_join_or(profile.email_domains)}"
                )
    if profile.owner_binding:
        if ctx.owner is None:
            reasons.append(
                "this profile binds certificates to the Unix owner of the dropped file, and the "
                "owner of this file is unknown; drop the request as your own user"
            )
        else:
            expected = profile.owner_binding.format(owner=ctx.owner)
            if not emails:
                reasons.append(
                    f"the request must carry your e-mail address {expected} "
                    f"(emailAddress={expected} in the subject)"
                )
            for addr in emails:
                if addr.lower() != expected.lower():
                    reasons.append(
                        f"the e-mail address {addr!r} does not belong to {ctx.owner}, who dropped "
                        f"the file; requests from {ctx.owner} may only name {expected}"
                    )

    # --- other subjectAltName entries ------------------------------------------------------
    dns_names: list[str] = []
    for name in req.san_dns:
        if not profile.allow_dns_names:
            reasons.append(
                f"DNS name {name!r} is not allowed in this profile's certificates; "
                "remove the subjectAltName DNS entries or use a server profile"
            )
            continue
        if has_control_characters(name) or not _DNS.fullmatch(name):
            reasons.append(f"DNS name {name!r} is not a valid host name")
            continue
        lowered = name.lower()
        if profile.dns_domains and not any(
            lowered == d or lowered.endswith("." + d) for d in profile.dns_domains
        ):
            reasons.append(
                f"DNS name {name!r} is outside the allowed domains {_join_or(profile.dns_domains)}"
            )
            continue
        if lowered not in dns_names:
            dns_names.append(lowered)
    if "server_auth" in profile.extended_key_usage and not dns_names and profile.allow_dns_names:
        cn = req.attribute_values("CN")
        if (
            cn
            and _DNS.fullmatch(cn[0])
            and (
                not profile.dns_domains
                or any(
                    cn[0].lower() == d or cn[0].lower().endswith("." + d)
                    for d in profile.dns_domains
                )
            )
        ):
            dns_names.append(cn[0].lower())
        else:
            reasons.append("a server certificate needs at least one DNS name in subjectAltName")
    for other in req.san_other:
        reasons.append(
            f"subjectAltName entry {other} is not allowed; only e-mail and DNS names are"
        )

    # --- extensions asking for CA powers --------------------------------------------------
    for ext in req.extensions:
        if ext.asks_ca_powers:
            reasons.append(
                f"the request asks for CA powers ({ext.detail}); certdrop issues only end-entity "
                "certificates — make the request without that extension"
            )
    ignored = sorted(
        {e.name for e in req.extensions if not e.asks_ca_powers and e.name != "subjectAltName"}
    )
    if ignored:
        notes.append("extensions in the request were not copied: " + ", ".join(ignored))

    # --- validity -------------------------------------------------------------------------
    not_before = (now - BACKDATE).replace(microsecond=0)
    not_after = (now + dt.timedelta(days=profile.validity_days)).replace(microsecond=0)
    if not_after > ctx.ca_not_after:
        not_after = ctx.ca_not_after
        notes.append(f"validity shortened to the CA's own end, {_fmt_day(not_after)}")
    if not_after <= now:
        reasons.append("the CA certificate has expired; no certificate can be issued")

    # --- uniqueness and renewal -----------------------------------------------------------
    supersedes: list[str] = []
    renew_from = dt.timedelta(days=profile.renew_before_days)
    for name, value in req.subject:
        urule = profile.subject.get(name)
        unique = urule is not None and urule.unique
        if not unique and name != "CN":
            continue
        for cert in ctx.existing.get((name, value.casefold()), ()):
            if cert.not_after <= now:
                continue
            if cert.not_after - now <= renew_from:
                if name == "CN" and cert.serial not in supersedes:
                    supersedes.append(cert.serial)
            elif unique:
                reasons.append(
                    f"{name} {value!r} already has a valid certificate (serial {cert.serial}, "
                    f"valid until {_fmt_day(cert.not_after)}); it can be renewed from "
                    f"{_fmt_day(cert.not_after - renew_from)}, or ask the CA operator to revoke it"
                )
    if supersedes:
        notes.append("renewal: supersedes " + ", ".join(supersedes))

    subject = tuple(req.subject)
    if reasons:
        return Decision(False, tuple(dict.fromkeys(reasons)), notes=tuple(notes))
    return Decision(
        accepted=True,
        reasons=(),
        subject=subject,
        emails=tuple(e for e in emails),
        dns_names=tuple(dns_names),
        not_before=not_before,
        not_after=not_after,
        supersedes=tuple(supersedes),
        needs_approval=profile.approval == "manual" and not ctx.approved,
        notes=tuple(notes),
    )
