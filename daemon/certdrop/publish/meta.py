"""The publishers' results in the index's key/value table, where `certdrop status`
(another process) and the expiry sweep read them."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # SQLAlchemy: not loaded by certdrop serve
    from ..index.store import Store


log = logging.getLogger("certdrop.publish")


def read_meta(store: Store, key: str) -> str | None:
    with store.begin() as conn:
        return store.get_meta(conn, key)


def write_meta(store: Store, key: str, value: str) -> None:
    """Record `value` under `key`; a failure is logged, never raised (a publication
    that happened must not be reported as failed because its record could not be kept)."""
    try:
        with store.begin() as conn:
            store.set_meta(conn, key, value)
    except Exception:
        log.exception("cannot record %s in the index", key)
