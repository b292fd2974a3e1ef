"""Serial numbers: random, positive, at least 64 random bits, at most 20 octets."""

from __future__ import annotations

from certdrop.authority.serials import random_serial, serial_hex


def test_random_serials_are_positive_with_at_least_64_bits_and_16_octets_at_most() -> None:
    serials = [random_serial() for _ in range(2000)]
    assert len(set(serials)) == len(serials)
    assert all(1 << 64 <= s < 1 << 127 for s in serials)  # DER: 16 octets, no sign octet
    assert max(s.bit_length() for s in serials) == 127  # the top bit is random too


def test_serial_hex_is_upper_case_with_at_least_two_digits() -> None:
    assert serial_hex(0) == "00"
    assert serial_hex(5) == "05"
    assert serial_hex(0xABC) == "ABC"
    assert serial_hex((1 << 159) - 1) == "7" + "F" * 39
