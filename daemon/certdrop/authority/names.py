"""Subject names: the attributes certdrop understands, by their short names.

The short names are those of the policy, of TOML enrollments and of what certdrop shows
(RFC 4514 text): CN, O, OU, C, L, ST, emailAddress, ...
"""

from __future__ import annotations

from collections.abc import Iterable

from cryptography import x509
from cryptography.x509.oid import NameOID

# short names <-> OIDs for the subject attributes certdrop understands
ATTRIBUTE_OIDS: dict[str, x509.ObjectIdentifier] = {
    "CN": NameOID.COMMON_NAME,
    "O": NameOID.ORGANIZATION_NAME,
    "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "C": NameOID.COUNTRY_NAME,
    "L": NameOID.LOCALITY_NAME,
    "ST": NameOID.STATE_OR_PROVINCE_NAME,
    "emailAddress": NameOID.EMAIL_ADDRESS,
    "serialNumber": NameOID.SERIAL_NUMBER,
    "DC": NameOID.DOMAIN_COMPONENT,
    "title": NameOID.TITLE,
    "GN": NameOID.GIVEN_NAME,
    "SN": NameOID.SURNAME,
    "UID": NameOID.USER_ID,
    "street": NameOID.STREET_ADDRESS,
    "postalCode": NameOID.POSTAL_CODE,
}
OID_NAMES: dict[x509.ObjectIdentifier, str] = {oid: name for name, oid in ATTRIBUTE_OIDS.items()}


def subject_text(name: x509.Name) -> str:
    """RFC 4514 text with readable names for every attribute certdrop knows."""
    return name.rfc4514_string(OID_NAMES)


def build_name(attrs: Iterable[tuple[str, str]]) -> x509.Name:
    """The Name of (short name, value) pairs, in their order, one attribute per RDN."""
    return x509.Name([x509.NameAttribute(ATTRIBUTE_OIDS[n], v) for n, v in attrs])
