"""`certdrop apache-config`'s text: the ap_expr conditions, mod_ssl's DN form, the block.

test_apache.py (e2e) feeds what it prints to a real Apache httpd.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from certdrop.authority.lifecycle import load_ca_certificates
from certdrop.config import Profile, SubjectRule
from certdrop.errors import CAError
from certdrop.publish.modssl import apache_config_text, client_profiles, subject_expr
from conftest import make_env

APACHE = '[apache]\nca_file = "/srv/ca.pem"\ncrl_file = "/srv/crl.pem"\n'


def profile(**rules: SubjectRule) -> Profile:
    return Profile(subject=rules)


def ca_certificate(*attrs: tuple[x509.ObjectIdentifier, str]) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(oid, value) for oid, value in attrs])
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


# --- subject_expr --------------------------------------------------------------------------------------
def test_each_rule_kind_becomes_a_condition() -> None:
    conds = subject_expr(
        profile(
            CN=SubjectRule(required=True),
            O=SubjectRule(required=True, equals="MyOrg"),
            OU=SubjectRule(required=True, one_of=["R&D", "Ops"]),
            L=SubjectRule(forbidden=True),
            C=SubjectRule(),  # optional without constraints: nothing to check
            ST=SubjectRule(equals="Brussels"),  # optional: absent, or as the rule says
            emailAddress=SubjectRule(required=True, domains=["example.org", "mail.example.org"]),
        )
    )
    assert conds == [
        "-n %{SSL_CLIENT_S_DN_CN}",
        "%{SSL_CLIENT_S_DN_O} == 'MyOrg'",
        "%{SSL_CLIENT_S_DN_OU} in {'R&D', 'Ops'}",
        "-z %{SSL_CLIENT_S_DN_L}",
        "(-z %{SSL_CLIENT_S_DN_ST} || %{SSL_CLIENT_S_DN_ST} == 'Brussels')",
        r"%{SSL_CLIENT_S_DN_Email} =~ m#^(?:[^@]+@(?:example\.org|mail\.example\.org))$#i",
    ]


def test_string_literals_are_escaped() -> None:
    [cond] = subject_expr(profile(O=SubjectRule(required=True, equals="O'Brien \\ Sons")))
    assert cond == r"%{SSL_CLIENT_S_DN_O} == 'O\'Brien \\ Sons'"


def test_several_checks_of_one_attribute_are_grouped() -> None:
    [cond] = subject_expr(profile(CN=SubjectRule(required=True, one_of=["a"], pattern="[a-z]+")))
    assert cond == "(%{SSL_CLIENT_S_DN_CN} in {'a'} && %{SSL_CLIENT_S_DN_CN} =~ m#^(?:[a-z]+)$#)"


def test_a_regex_delimiter_the_pattern_uses_is_avoided() -> None:
    [cond] = subject_expr(profile(CN=SubjectRule(required=True, pattern="#[0-9]+")))
    assert cond == "%{SSL_CLIENT_S_DN_CN} =~ m/^(?:#[0-9]+)$/"
    # a pattern holding every delimiter cannot be written: left to the CA's policy check
    [cond] = subject_expr(profile(CN=SubjectRule(required=True, pattern="#/%!,;:_")))
    assert cond == "-n %{SSL_CLIENT_S_DN_CN}"


def test_the_profiles_email_domains_apply_to_the_subject_address() -> None:
    p = Profile(email_domains=["example.org"], subject={"emailAddress": SubjectRule()})
    assert subject_expr(p) == [
        r"(-z %{SSL_CLIENT_S_DN_Email} || %{SSL_CLIENT_S_DN_Email} =~ m#^(?:[^@]+@(?:example\.org))$#i)"
    ]


# --- the block --------------------------------------------------------------------------------------------
def test_the_whole_block_for_the_default_client_profile(tmp_path: Path) -> None:
    env = make_env(tmp_path, extra=APACHE)
    cert, chain = load_ca_certificates(env.state)
    assert cert.subject.rfc4514_string() == "CN=Test CA,O=MyOrg,C=BE" and chain == []
    text = apache_config_text(
        env.settings, cert, chain, log_file="/var/log/c.log", config_path=Path("/etc/cd.toml")
    )
    assert text == "\n".join(
        [
            "# certdrop apache-config from /etc/cd.toml",
            "# Client-certificate authentication with the CA CN=Test CA,O=MyOrg,C=BE.",
            "# Put this inside the <VirtualHost *:443> that has SSLEngine on and the server's own",
            "# SSLCertificateFile / SSLCertificateKeyFile; mod_ssl must be enabled (a2enmod ssl).",
            "# certdrop keeps the two files below current and reloads Apache gracefully.",
            "",
            "# the CAs clients chain to: this CA and any CA above it, merged into one file (it is also",
            "# the list of acceptable CAs the server sends, so browsers know which certificate to offer)",
            'SSLCACertificateFile "/srv/ca.pem"',
            "# the CRL of every CA in that chain, refreshed well before its nextUpdate",
            'SSLCARevocationFile "/srv/crl.pem"',
            "# check revocation for the client certificate and every CA above it",
            "SSLCARevocationCheck chain",
            "SSLVerifyClient require",
            "SSLVerifyDepth 1",
            "",
            "# who the client certificates are for (the subject rules of the profile(s) client);",
            "# the modern form of SSLRequire",
            '<Location "/">',
            "    Require expr \"%{SSL_CLIENT_VERIFY} == 'SUCCESS' && %{SSL_CLIENT_I_DN} == "
            "'CN=Test CA,O=MyOrg,C=BE' && -n %{SSL_CLIENT_S_DN_CN}\"",
            "</Location>",
            "",
            "# who connected: the e-mail address and serial of each client certificate",
            'LogFormat "%h %l %{SSL_CLIENT_S_DN_Email}x %t \\"%r\\" %>s %b '
            '\\"%{SSL_CLIENT_S_DN_CN}x\\" %{SSL_CLIENT_M_SERIAL}x" certdrop_client',
            'CustomLog "/var/log/c.log" certdrop_client',
            "",
        ]
    )


def test_only_client_profiles_count_and_any_of_them_lets_in(tmp_path: Path) -> None:
    env = make_env(
        tmp_path,
        init=False,
        extra=APACHE
        + '[profiles.staff]\nextended_key_usage = ["client_auth", "email_protection"]\n'
        + '[profiles.staff.subject]\nO = { required = true, equals = "Staff" }\n',
    )
    settings = env.settings
    assert client_profiles(settings) == ["client", "staff"]  # not "server"
    cert = ca_certificate((NameOID.COMMON_NAME, "CA"))
    text = apache_config_text(settings, cert, [cert, cert])
    assert "SSLVerifyDepth 3" in text
    assert "(the subject rules of the profile(s) client, staff);" in text
    assert "&& ((-n %{SSL_CLIENT_S_DN_CN}) || (%{SSL_CLIENT_S_DN_O} == 'Staff'))\"" in text
    assert 'CustomLog "${APACHE_LOG_DIR}/certdrop-clients.log" certdrop_client' in text
    assert text.startswith("# certdrop apache-config\n")


def test_a_client_profile_without_rules_lets_in_every_certificate_of_the_ca(
    tmp_path: Path,
) -> None:
    env = make_env(
        tmp_path,
        init=False,
        extra=APACHE + "[profiles.any]\n[profiles.any.subject]\n",
    )
    cert = ca_certificate((NameOID.COMMON_NAME, "CA"))
    text = apache_config_text(env.settings, cert)
    assert (
        "Require expr \"%{SSL_CLIENT_VERIFY} == 'SUCCESS' && %{SSL_CLIENT_I_DN} == 'CN=CA'\""
        in text
    )


def test_the_issuer_is_written_as_mod_ssl_formats_it(tmp_path: Path) -> None:
    cert = ca_certificate(
        (NameOID.COUNTRY_NAME, "BE"),
        (NameOID.ORGANIZATION_NAME, 'A, B+C "D" <E>;'),
        (NameOID.SERIAL_NUMBER, "42"),
        (NameOID.COMMON_NAME, " #lead and trail "),
    )
    text = apache_config_text(make_env(tmp_path, init=False).settings, cert)
    dn = r"CN=\ #lead and trail\ ,2.5.4.5=42,O=A\, B\+C \"D\" \<E\>\;,C=BE"
    escaped = dn.replace("\\", "\\\\")  # as an ap_expr string literal
    assert f"%{{SSL_CLIENT_I_DN}} == '{escaped}'" in text


# --- the CA certificates ----------------------------------------------------------------------------
def test_load_ca_certificates_says_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(CAError, match=f"no CA in {tmp_path}; create one with 'certdrop init'"):
        load_ca_certificates(tmp_path)
    (tmp_path / "ca.cer").write_text("not a certificate")
    with pytest.raises(CAError, match=f"cannot read the CA certificate in {tmp_path}: "):
        load_ca_certificates(tmp_path)


def test_the_ocsp_variant_asks_certdrop_serve_instead_of_reading_a_crl(tmp_path: Path) -> None:
    env = make_env(tmp_path, extra=APACHE + '\n[http]\nlisten = "0.0.0.0:8081"\n')
    cert, chain = load_ca_certificates(env.state)
    text = apache_config_text(env.settings, cert, chain, ocsp=True)
    lines = text.splitlines()
    assert "SSLOCSPEnable leaf" in lines
    assert 'SSLOCSPDefaultResponder "http://127.0.0.1:8081/ocsp"' in lines  # the loopback
    assert "SSLOCSPOverrideResponder on" in lines and "SSLOCSPUseRequestNonce on" in lines
    assert not any(line.startswith("SSLCARevocation") for line in lines)
    assert 'SSLCACertificateFile "/srv/ca.pem"' in lines and "SSLVerifyClient require" in lines
    # with [http] base_url, Apache asks where the certificates' AIA points
    env.write_config(APACHE + '\n[http]\nbase_url = "https://pki.example.org/ca"\n')
    text = apache_config_text(env.settings, cert, chain, ocsp=True)
    assert 'SSLOCSPDefaultResponder "https://pki.example.org/ca/ocsp"' in text.splitlines()
    # the CLI prints it
    code, out, _ = env.cli("apache-config", "--ocsp")
    assert code == 0 and "SSLOCSPEnable leaf" in out
