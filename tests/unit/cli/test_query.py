"""`certdrop show REF` and `certdrop list --search TEXT` through the CLI, on certificates
a running daemon issued for requests made with openssl."""

from __future__ import annotations

import json
from typing import Any

import pytest

from conftest import CAEnv, make_env
from lookup_kit import issue_people


@pytest.fixture(scope="module")
def people(tmp_path_factory: pytest.TempPathFactory) -> tuple[CAEnv, dict[str, str]]:
    tmp = tmp_path_factory.mktemp("lookup")
    env = make_env(tmp)
    serials = issue_people(env, tmp)
    code, _, err = env.cli("revoke", serials["team2"], "--reason", "affiliationChanged")
    assert code == 0, err
    return env, serials


def _show(env: CAEnv, ref: str) -> Any:
    code, out, err = env.cli("show", ref, "--json")
    assert code == 0, err
    return json.loads(out)


def test_show_by_cn_or_e_mail_in_any_case(people: tuple[CAEnv, dict[str, str]]) -> None:
    env, serials = people
    for ref in ("Alice Example", "alice example", "ALICE@example.ORG", "alice", serials["alice"]):
        doc = _show(env, ref)
        [cert] = doc["certificates"]
        assert cert["serial"] == serials["alice"], ref
        assert cert["request_name"] == "alice"
    assert _show(env, "alice example")["certificates"][0]["matched_by"] == ["CN"]
    # each e-mail address of the subjectAltName; the history is the certificate's
    for ref in ("bob@example.org", "b.builder@EXAMPLE.org"):
        doc = _show(env, ref)
        [cert] = doc["certificates"]
        assert (cert["serial"], cert["matched_by"]) == (serials["bob"], ["e-mail"])
        assert [(h["name"], h["outcome"]) for h in doc["history"]] == [("bob", "issued")]

    code, out, err = env.cli("show", "Bob Builder")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"serial       {serials['bob']}"
    assert "matched by   CN" in lines
    assert "status       valid" in lines


def test_show_lists_every_certificate_a_shared_address_names(
    people: tuple[CAEnv, dict[str, str]],
) -> None:
    env, serials = people
    doc = _show(env, "Team@Example.org")
    certs = {c["serial"]: c for c in doc["certificates"]}
    assert set(certs) == {serials["team1"], serials["team2"]}
    assert {c["status"] for c in certs.values()} == {"valid", "revoked"}
    assert all(c["matched_by"] == ["e-mail"] for c in certs.values())
    code, out, err = env.cli("show", "team@example.org", "--pem")
    assert code == 0, err
    assert out.count("-----BEGIN CERTIFICATE-----") == 2
    code, out, _ = env.cli("show", "--help")
    assert "shows them all" in " ".join(out.split())


def test_show_of_nothing_is_one_line(people: tuple[CAEnv, dict[str, str]]) -> None:
    env, _ = people
    code, out, err = env.cli("show", "nobody@example.org")
    assert (code, out) == (1, "")
    assert err == (
        "no certificate with serial, request name, CN or e-mail 'nobody@example.org'; "
        "see 'certdrop list --search TEXT'"
    )


def _search(env: CAEnv, *args: str) -> list[str]:
    code, out, err = env.cli("list", "--json", "--search", *args)
    assert code == 0, err
    return sorted(c["request_name"] for c in json.loads(out)["certificates"])


def test_list_search_with_the_other_filters(people: tuple[CAEnv, dict[str, str]]) -> None:
    env, serials = people
    assert _search(env, "EXAMPLE.ORG") == ["alice", "bob", "team1", "team2"]
    assert _search(env, "builder") == ["bob"]  # CN and e-mail: once
    assert _search(env, "team", "--status", "revoked") == ["team2"]
    assert _search(env, "team", "--status", "valid") == ["team1"]
    assert _search(env, "team", "--expiring", "400") == ["team1"]
    assert _search(env, "team", "--expiring", "30") == []
    assert _search(env, "ali") == ["alice"]  # request name, CN and e-mail
    assert _search(env, serials["bob"][-10:-2].lower()) == ["bob"]  # its random part
    assert _search(env, "nobody") == []

    code, out, err = env.cli("list", "--search", "TEAM")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["SERIAL", "STATUS", "NOT", "AFTER", "PROFILE", "REQUEST", "SUBJECT"]
    assert sorted(line.split()[0] for line in lines[1:]) == sorted(
        [serials["team1"], serials["team2"]]
    )
    code, out, _ = env.cli("list", "--search", "nobody")
    assert (code, out) == (0, "no certificate matches 'nobody'\n")
