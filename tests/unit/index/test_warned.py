"""The record of expiry warnings: thresholds per kind and certificate, kept across restarts."""

from __future__ import annotations

import datetime as dt

from certdrop.index import warned
from certdrop.index.store import Store

T0 = dt.datetime(2030, 5, 1, 12, 0, tzinfo=dt.UTC)


def test_thresholds_are_recorded_per_kind_and_serial(index_url: str) -> None:
    url = index_url
    store = Store(url).open()
    with store.begin() as conn:
        assert warned.thresholds_done(conn, "cert", "0A") == set()
        warned.record(conn, "cert", "0A", [7, 30], T0)
        warned.record(conn, "cert", "0A", [], T0)  # nothing to record
        warned.record(conn, "ca", "0A", [90], T0)
        warned.record(conn, "cert", "0B", [1], T0)
    store.close()

    store = Store(url).open()  # a restart remembers them
    try:
        with store.begin() as conn:
            assert warned.thresholds_done(conn, "cert", "0A") == {7, 30}
            assert warned.thresholds_done(conn, "ca", "0A") == {90}
            assert warned.thresholds_done(conn, "cert", "0B") == {1}
            assert warned.thresholds_done(conn, "ca", "0B") == set()
    finally:
        store.close()
