"""Reading what `certdrop import` adopts (certdrop.issue.importer): openssl's index.txt
and its times and reasons, and folders of certificate files. The adoption itself, with a
real `openssl ca`, is tests/e2e/test_import.py."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from certdrop.errors import CertdropError
from certdrop.issue.importer import parse_openssl_time, read_cert_folder, read_openssl_index


def test_parse_openssl_time() -> None:
    assert parse_openssl_time("250102030405Z") == dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    assert parse_openssl_time("500102030405Z").year == 1950
    assert parse_openssl_time("20510102030405Z").year == 2051
    with pytest.raises(ValueError):
        parse_openssl_time("yesterday")


def line(*fields: str) -> str:
    return "\t".join(fields) + "\n"


def test_index_lines_each_become_a_candidate_or_a_problem(tmp_path: Path) -> None:
    certs = tmp_path / "newcerts"
    certs.mkdir()
    for name in ("0A.pem", "0b.pem", "1C.pem", "alice.pem"):
        (certs / name).write_text("a certificate file")
    index = tmp_path / "index.txt"
    index.write_text(
        line("V", "350101000000Z", "", "0A", "unknown", "/CN=a")
        + line("R", "350101000000Z", "260101120000Z,keyTime,x", "B", "unknown", "/CN=b")
        + "\n"
        + line("R", "350101000000Z", "260101120000Z,lunchtime", "1C", "unknown", "/CN=c")
        + line("V", "350101000000Z", "", "XYZ", "unknown", "/CN=d")
        + line("E", "200101000000Z", "", "99", "unknown", "/CN=e")
        + line("V", "350101000000Z", "", "FF", "alice.pem", "/CN=f")
        + "not an index line\n"
    )
    got = read_openssl_index(index, certs)
    assert [c.where for c in got] == [f"index.txt line {n}" for n in (1, 2, 4, 5, 6, 7, 8)]
    a, b, c, d, e, f, junk = got
    assert (a.name, a.path, a.index_status, a.problem) == ("0A", certs / "0A.pem", "V", "")
    # an odd-length serial finds 0b.pem; openssl's keyTime is keyCompromise
    assert b.path == certs / "0b.pem" and b.revocation_reason == "keyCompromise"
    assert b.revoked_at == dt.datetime(2026, 1, 1, 12, tzinfo=dt.UTC)
    assert "cannot be read: unknown revocation reason 'lunchtime'" in c.problem
    assert d.problem == "the serial 'XYZ' is not hexadecimal" and d.path is None
    assert e.problem == f"its certificate 99.pem is not in {certs}"
    assert (f.name, f.path) == ("alice", certs / "alice.pem")  # the file column names it
    assert junk.problem.startswith("not an index.txt line")


def test_missing_sources_are_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(CertdropError, match="cannot read"):
        read_openssl_index(tmp_path / "nosuch.txt", tmp_path)
    (tmp_path / "index.txt").write_text("")
    with pytest.raises(CertdropError, match="pass --certs with the new_certs_dir"):
        read_openssl_index(tmp_path / "index.txt", tmp_path / "nosuch")
    with pytest.raises(CertdropError, match="cannot read the folder"):
        read_cert_folder(tmp_path / "nosuch")


def test_a_folder_of_certificate_files(tmp_path: Path) -> None:
    for name in ("client.cer", "b.CRT", "c.pem", "d.der", ".hidden.cer", "notes.txt"):
        (tmp_path / name).write_text("x")
    got = read_cert_folder(tmp_path)
    assert [(c.where, c.name) for c in got] == [
        ("b.CRT", "b"),
        ("c.pem", "c"),
        ("client.cer", "client"),
        ("d.der", "d"),
    ]
