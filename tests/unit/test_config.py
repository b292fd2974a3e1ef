"""Configuration (certdrop.config): the demo file, defaults, CERTDROP_ variables, and one
clear line for every kind of bad value."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from certdrop.config import load_settings
from certdrop.errors import ConfigError
from conftest import (
    REPO,
)


def test_demo_config_has_every_spec_key_and_loads() -> None:
    s = load_settings(REPO / "config" / "certdrop.toml", {})
    doc = tomllib.loads((REPO / "config" / "certdrop.toml").read_text())
    spec_keys = {
        "paths": ["spool", "state", "database"],
        "ca": ["common_name", "organization", "key_type", "validity_days"],
        "policy": ["default_profile", "lint"],
        "pkcs12": ["encryption", "password_delivery"],
        "crl": ["validity_days", "refresh_before_days", "distribution_point"],
        "apache": [
            "enabled",
            "ca_file",
            "crl_file",
            "configtest_command",
            "reload_command",
            "debounce_seconds",
        ],
        "expiry": ["warn_days", "notify_holder", "notify_admin", "sweep_minutes"],
        "mail": [
            "enabled",
            "sender",
            "admin",
            "smtp_host",
            "smtp_port",
            "security",
            "username",
            "password_file",
        ],
        "watch": ["mode", "poll_seconds", "settle_seconds", "max_request_bytes"],
        "http": ["listen", "base_url"],
    }
    for section, keys in spec_keys.items():
        for key in keys:
            assert key in doc[section], f"[{section}] {key} missing from config/certdrop.toml"
    for key in [
        "validity_days",
        "key_usage",
        "extended_key_usage",
        "approval",
        "rsa_min_bits",
        "ec_curves",
        "allow_ed25519",
        "email_domains",
        "owner_binding",
        "renew_before_days",
        "subject",
    ]:
        assert key in doc["profiles"]["client"], key
    assert s.policy.default_profile == "client"
    assert s.paths.spool == (REPO / "spool").resolve()


def test_defaults_without_sections(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("")
    s = load_settings(cfg, {})
    assert s.ca.key_type == "ec-p256"
    assert s.profiles["client"].subject["CN"].unique
    assert s.expiry.warn_days == [30, 7, 1]
    assert s.watch.max_request_bytes == 65536
    assert s.database_url == "sqlite:////var/lib/certdrop/index.sqlite"


def test_environment_overrides(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[mail]\nsmtp_host = "a"\n[profiles.client]\nvalidity_days = 100\n')
    s = load_settings(
        cfg,
        {
            "CERTDROP_MAIL__SMTP_HOST": "mx.example.org",
            "CERTDROP_PROFILES__CLIENT__VALIDITY_DAYS": "200",
        },
    )
    assert s.mail.smtp_host == "mx.example.org"
    assert s.profiles["client"].validity_days == 200


@pytest.mark.parametrize(
    ("toml", "env", "expect"),
    [
        (
            '[ca]\nkey_type = "rsa-1024"\n',
            {},
            "ca.key_type = 'rsa-1024': Input should be 'rsa-2048'",
        ),
        ('[watch]\nmode = "fast"\n', {}, "watch.mode = 'fast'"),
        ("[mail]\nsmtp_port = 99999\n", {}, "mail.smtp_port = 99999"),
        ('[policy]\ndefault_profile = "nope"\n', {}, "default_profile = 'nope' names no profile"),
        ("[watch]\nmax_request_bytes = 1\n", {}, "watch.max_request_bytes = 1"),
        ("[ca]\ncolour = 1\n", {}, "ca.colour: unknown key"),
        (
            '[profiles.client.subject]\nCN = { pattern = "(" }\n',
            {},
            "not a valid regular expression",
        ),
        ("", {"CERTDROP_MAIL__SMTP_PORT": "abc"}, "mail.smtp_port = 'abc'"),
        (
            "[crl]\nvalidity_days = 2\nrefresh_before_days = 3\n",
            {},
            "refresh_before_days must be smaller",
        ),
        ("this is not toml", {}, "cannot be read"),
        ('[http]\nlisten = "8080"\n', {}, "http.listen = '8080': must be HOST:PORT"),
        (
            '[http]\nbase_url = "ca.example.org"\n',
            {},
            "http.base_url = 'ca.example.org': must be an http:// or https:// URL",
        ),
        ("", {"CERTDROP_HTTP__WORKERS": "-1"}, "http.workers = '-1'"),
    ],
)
def test_invalid_configuration_is_one_clear_line(
    tmp_path: Path, toml: str, env: dict, expect: str
) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(toml)
    with pytest.raises(ConfigError) as exc:
        load_settings(cfg, env)
    assert expect in str(exc.value)
    # and through the CLI: one line on stderr, no traceback, exit code 78
    e = {k: v for k, v in os.environ.items() if not k.startswith("CERTDROP_")}
    e.update(env)
    proc = subprocess.run(
        [sys.executable, "-m", "certdrop.cli", "--config", str(cfg), "check-config"],
        capture_output=True,
        text=True,
        env=e,
    )
    assert proc.returncode == 78
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("certdrop: error: ")
    assert "Traceback" not in proc.stderr


def test_base_url_gives_the_urls_issued_certificates_carry(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text('[http]\nbase_url = "http://pki.example.org/certdrop/"\n')
    s = load_settings(cfg, {})
    assert s.http.base_url == "http://pki.example.org/certdrop"
    assert s.crl_url == "http://pki.example.org/certdrop/crl.der"
    assert s.ocsp_url == "http://pki.example.org/certdrop/ocsp"
    assert s.ca_issuers_url == "http://pki.example.org/certdrop/ca.cer"
    # an explicit [crl] distribution_point wins for the CRL; none at all: no URLs
    cfg.write_text(
        '[http]\nbase_url = "http://pki.example.org"\n'
        '[crl]\ndistribution_point = "ldap://ldap.example.org/cn=CA?certificateRevocationList"\n'
    )
    assert load_settings(cfg, {}).crl_url.startswith("ldap://")
    cfg.write_text("")
    s = load_settings(cfg, {})
    assert (s.crl_url, s.ocsp_url, s.ca_issuers_url) == ("", "", "")
