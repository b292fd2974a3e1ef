"""Serial numbers: positive, at least 64 random bits, at most 20 octets, growing with time."""

from __future__ import annotations

import datetime as dt

from certdrop.authority.serials import RANDOM_BITS, random_serial, serial_hex


def test_random_serials_are_positive_with_at_least_64_random_bits_and_16_octets_at_most() -> None:
    now = dt.datetime(2026, 12, 4, 6, 0, tzinfo=dt.UTC)
    serials = [random_serial(now) for _ in range(2000)]
    assert len(set(serials)) == len(serials)
    assert all(1 << 64 <= s < 1 << 127 for s in serials)  # DER: 16 octets, no sign octet
    low = [s & ((1 << RANDOM_BITS) - 1) for s in serials]
    assert RANDOM_BITS >= 64
    assert max(x.bit_length() for x in low) == RANDOM_BITS  # the top random bit is random too
    assert {s >> RANDOM_BITS for s in serials} == {int(now.timestamp() * 1000)}
    # every random bit takes both values across the sample
    for bit in range(RANDOM_BITS):
        assert 0 < sum((x >> bit) & 1 for x in low) < len(low)


def test_serials_grow_with_time_as_numbers_and_as_index_keys() -> None:
    t0 = dt.datetime(2026, 12, 4, 6, 0, tzinfo=dt.UTC)
    later = [random_serial(t0 + dt.timedelta(milliseconds=i)) for i in range(0, 5000, 7)]
    assert later == sorted(later)
    keys = [serial_hex(s) for s in later]
    assert keys == sorted(keys)  # the index's text keys: next to each other, in order
    far = random_serial(dt.datetime(2300, 1, 1, tzinfo=dt.UTC))
    assert far < 1 << 127


def test_serial_hex_is_upper_case_with_at_least_two_digits() -> None:
    assert serial_hex(0) == "00"
    assert serial_hex(5) == "05"
    assert serial_hex(0xABC) == "ABC"
    assert serial_hex((1 << 159) - 1) == "7" + "F" * 39
