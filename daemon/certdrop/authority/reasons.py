"""RFC 5280 revocation reasons: one table, and what the CLI, the CRL encoder and the
importer read from it.

Light on purpose (no cryptography): the CLI imports it at start for `--reason`'s help.
A reason's name is RFC 5280's, which is also the value of cryptography's
`x509.ReasonFlags` member for it.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from ..errors import CertdropError


class Reason(NamedTuple):
    name: str  # RFC 5280's name: what certdrop stores, shows and takes
    code: int  # CRLReason, the value of a CRL entry's reasonCode
    offered: bool  # `certdrop revoke --reason` takes it
    in_crl: bool = True  # the CA writes it in a CRL entry (e.g. an imported revocation)
    refused: str = ""  # why it is not offered
    openssl: tuple[str, ...] = ()  # further names `openssl ca`'s index.txt uses for it


REASON_TABLE: tuple[Reason, ...] = (
    # openssl: the further names in apps/ca.c's crl_reasons; an index.txt entry revoked
    # with removeFromCRL (which only a delta CRL can carry) is imported as unspecified
    Reason("unspecified", 0, offered=True, openssl=("removeFromCRL",)),
    Reason("keyCompromise", 1, offered=True, openssl=("keyTime",)),
    Reason("cACompromise", 2, offered=True, openssl=("CAkeyTime",)),
    Reason("affiliationChanged", 3, offered=True),
    Reason("superseded", 4, offered=True),
    Reason("cessationOfOperation", 5, offered=True),
    Reason(
        "certificateHold",
        6,
        offered=False,
        refused="certificateHold is not offered: certdrop cannot take a certificate "
        "off hold again, so a hold would be a revocation in disguise",
        openssl=("holdInstruction",),
    ),
    Reason(
        "removeFromCRL",
        8,
        offered=False,
        in_crl=False,
        refused="removeFromCRL is only meaningful in delta CRLs, which certdrop does not make",
    ),
    Reason("privilegeWithdrawn", 9, offered=True),
    Reason(
        "aACompromise",
        10,
        offered=False,
        refused="aACompromise applies to attribute certificates, which certdrop does not issue",
    ),
)

# what `revoke --reason` takes, in the table's order
REASONS: tuple[str, ...] = tuple(r.name for r in REASON_TABLE if r.offered)

# name -> reasonCode, for every reason the CA writes in a CRL entry
CRL_REASON_CODES: dict[str, int] = {r.name: r.code for r in REASON_TABLE if r.in_crl}

# a name in an openssl index.txt (lower case) -> certdrop's
OPENSSL_REASONS: dict[str, str] = {
    alias.lower(): r.name for r in REASON_TABLE if r.in_crl for alias in (r.name, *r.openssl)
}

_REFUSED = {r.name.lower(): r.refused for r in REASON_TABLE if r.refused}


def parse_reason(text: str) -> str:
    """The canonical RFC 5280 name for `text` (any case, '-' or '_' allowed)."""
    key = re.sub(r"[\s_\-]", "", text).lower()
    for name in REASONS:
        if name.lower() == key:
            return name
    allowed = ", ".join(REASONS)
    if key in _REFUSED:
        raise CertdropError(f"--reason {text}: {_REFUSED[key]}; allowed: {allowed}")
    raise CertdropError(
        f"--reason {text!r} is not an RFC 5280 revocation reason; allowed: {allowed}"
    )
