"""RFC 5280 revocation reasons that certdrop offers (no heavy imports: the CLI uses it)."""

from __future__ import annotations

import re

from ..errors import CertdropError

REASONS: tuple[str, ...] = (
    "unspecified",
    "keyCompromise",
    "cACompromise",
    "affiliationChanged",
    "superseded",
    "cessationOfOperation",
    "privilegeWithdrawn",
)
_REFUSED_REASONS = {
    "certificatehold": "certificateHold is not offered: certdrop cannot take a certificate "
    "off hold again, so a hold would be a revocation in disguise",
    "removefromcrl": "removeFromCRL is only meaningful in delta CRLs, which certdrop does not make",
    "aacompromise": "aACompromise applies to attribute certificates, which certdrop does not issue",
}


def parse_reason(text: str) -> str:
    """The canonical RFC 5280 name for `text` (any case, '-' or '_' allowed)."""
    key = re.sub(r"[\s_\-]", "", text).lower()
    for name in REASONS:
        if name.lower() == key:
            return name
    allowed = ", ".join(REASONS)
    if key in _REFUSED_REASONS:
        raise CertdropError(f"--reason {text}: {_REFUSED_REASONS[key]}; allowed: {allowed}")
    raise CertdropError(
        f"--reason {text!r} is not an RFC 5280 revocation reason; allowed: {allowed}"
    )
