"""Certificate serial numbers: random, positive, and how certdrop writes them."""

from __future__ import annotations

import secrets


def random_serial() -> int:
    """A positive serial with 127 random bits from the OS CSPRNG (16 octets in DER)."""
    while True:
        serial = int.from_bytes(secrets.token_bytes(16), "big") >> 1
        if serial >= 1 << 64:  # at least 64 bits of entropy actually used
            return serial


def serial_hex(serial: int) -> str:
    """Upper-case hex, at least two digits: the serial as the index and every command show it."""
    return format(serial, "X").rjust(2, "0") if serial else "00"
