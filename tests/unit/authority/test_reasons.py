"""The revocation reasons `certdrop revoke --reason` accepts."""

from __future__ import annotations

import pytest

from certdrop.authority.reasons import parse_reason


def test_reason_names() -> None:
    assert parse_reason("keyCompromise") == "keyCompromise"
    assert parse_reason("key-compromise") == "keyCompromise"
    assert parse_reason("CESSATION_OF_OPERATION") == "cessationOfOperation"
    with pytest.raises(Exception, match="aACompromise applies to attribute"):
        parse_reason("aACompromise")
