"""`certdrop apache-config`: the mod_ssl block that matches this setup.

Client-certificate authentication against this CA: the files certdrop keeps current,
SSLVerifyClient require, a `Require expr` on the subject rules of the profiles whose
certificates authenticate clients, and a log format with who connected.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509

from ..authority.names import subject_text
from ..config import Profile, Settings, split_listen

_MODSSL_VARS = {
    "CN": "SSL_CLIENT_S_DN_CN",
    "O": "SSL_CLIENT_S_DN_O",
    "OU": "SSL_CLIENT_S_DN_OU",
    "C": "SSL_CLIENT_S_DN_C",
    "L": "SSL_CLIENT_S_DN_L",
    "ST": "SSL_CLIENT_S_DN_ST",
    "emailAddress": "SSL_CLIENT_S_DN_Email",
    "serialNumber": "SSL_CLIENT_S_DN_serialNumber",
    "DC": "SSL_CLIENT_S_DN_DC",
    "title": "SSL_CLIENT_S_DN_T",
    "GN": "SSL_CLIENT_S_DN_G",
    "SN": "SSL_CLIENT_S_DN_S",
    "UID": "SSL_CLIENT_S_DN_UID",
    "street": "SSL_CLIENT_S_DN_street",
    "postalCode": "SSL_CLIENT_S_DN_postalCode",
}


def _expr_string(value: str) -> str:
    """An ap_expr string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


_REGEX_DELIMITERS = "#/%!,;:_"


def _expr_regex(pattern: str, flags: str = "") -> str | None:
    """An ap_expr regex literal m#...# (full match, as the policy uses), or None.

    ap_expr cannot escape the delimiter, so one that the pattern does not contain is
    chosen; None if the pattern contains them all.
    """
    for delim in _REGEX_DELIMITERS:
        if delim not in pattern:
            return f"m{delim}^(?:{pattern})${delim}{flags}"
    return None


def subject_expr(profile: Profile) -> list[str]:
    """ap_expr conditions for a profile's subject rules (what mod_ssl can check)."""
    conds: list[str] = []
    for attr, rule in profile.subject.items():
        var = "%{" + _MODSSL_VARS[attr] + "}"
        parts: list[str] = []
        if rule.forbidden:
            conds.append(f"-z {var}")
            continue
        if rule.equals is not None:
            parts.append(f"{var} == {_expr_string(rule.equals)}")
        if rule.one_of is not None:
            parts.append(f"{var} in {{{', '.join(_expr_string(v) for v in rule.one_of)}}}")
        if rule.pattern is not None:
            regex = _expr_regex(rule.pattern)
            if regex is not None:  # else left to the CA's policy check alone
                parts.append(f"{var} =~ {regex}")
        domains = rule.domains
        if attr == "emailAddress" and domains is None and profile.email_domains:
            domains = profile.email_domains
        if domains:
            alt = "|".join(re.escape(d) for d in domains)
            parts.append(f"{var} =~ {_expr_regex('[^@]+@(?:' + alt + ')', 'i')}")  # no '#' in it
        if not parts:
            if rule.required:
                conds.append(f"-n {var}")
            continue
        joined = " && ".join(parts)
        if rule.required:
            conds.append(joined if len(parts) == 1 else f"({joined})")
        else:
            conds.append(f"(-z {var} || {joined})")
    return conds


def client_profiles(settings: Settings) -> list[str]:
    """Profiles whose certificates can authenticate clients (clientAuth)."""
    return [n for n, p in settings.profiles.items() if "client_auth" in p.extended_key_usage]


def apache_config_text(
    settings: Settings,
    ca_cert: x509.Certificate,
    chain: Sequence[x509.Certificate] = (),
    *,
    log_file: str = "${APACHE_LOG_DIR}/certdrop-clients.log",
    config_path: Path | None = None,
    ocsp: bool = False,
) -> str:
    """The mod_ssl block for client-certificate authentication against this CA; with
    `ocsp`, revocation is checked by asking `certdrop serve` (OCSP) instead of a CRL
    file: a revocation counts at once, with no reload of Apache."""
    apache = settings.apache
    depth = 1 + len(chain)
    profiles = client_profiles(settings)
    alternatives: list[str] = []
    for name in profiles:
        conds = subject_expr(settings.profiles[name])
        if conds:
            alternatives.append(" && ".join(conds))
        else:
            alternatives = []
            break
    verify = "%{SSL_CLIENT_VERIFY} == 'SUCCESS'"
    issuer = f"%{{SSL_CLIENT_I_DN}} == {_expr_string(_modssl_dn(ca_cert.subject))}"
    if len(alternatives) > 1:
        policy = " || ".join(f"({a})" for a in alternatives)
        expr = f"{verify} && {issuer} && ({policy})"
    elif alternatives:
        expr = f"{verify} && {issuer} && {alternatives[0]}"
    else:
        expr = f"{verify} && {issuer}"
    source = f" from {config_path}" if config_path else ""
    lines = [
        f"# certdrop apache-config{source}",
        f"# Client-certificate authentication with the CA {subject_text(ca_cert.subject)}.",
        "# Put this inside the <VirtualHost *:443> that has SSLEngine on and the server's own",
        "# SSLCertificateFile / SSLCertificateKeyFile; mod_ssl must be enabled (a2enmod ssl).",
        (
            "# certdrop keeps the CA file below current; `certdrop serve` must run (OCSP)."
            if ocsp
            else "# certdrop keeps the two files below current and reloads Apache gracefully."
        ),
        "",
        "# the CAs clients chain to: this CA and any CA above it, merged into one file (it is also",
        "# the list of acceptable CAs the server sends, so browsers know which certificate to offer)",
        f'SSLCACertificateFile "{apache.ca_file}"',
        *(_ocsp_lines(settings) if ocsp else _crl_lines(settings)),
        "SSLVerifyClient require",
        f"SSLVerifyDepth {depth}",
        "",
        "# who the client certificates are for (the subject rules of the profile(s) "
        + ", ".join(profiles or ["-"])
        + ");",
        "# the modern form of SSLRequire",
        '<Location "/">',
        # mod_authz_core takes the expression raw (only the outer quotes are removed)
        f'    Require expr "{expr}"',
        "</Location>",
        "",
        "# who connected: the e-mail address and serial of each client certificate",
        'LogFormat "%h %l %{SSL_CLIENT_S_DN_Email}x %t \\"%r\\" %>s %b '
        '\\"%{SSL_CLIENT_S_DN_CN}x\\" %{SSL_CLIENT_M_SERIAL}x" certdrop_client',
        f'CustomLog "{log_file}" certdrop_client',
        "",
    ]
    return "\n".join(lines)


def _crl_lines(settings: Settings) -> list[str]:
    return [
        "# the CRL of every CA in that chain, refreshed well before its nextUpdate",
        f'SSLCARevocationFile "{settings.apache.crl_file}"',
        "# check revocation for the client certificate and every CA above it",
        "SSLCARevocationCheck chain",
    ]


def ocsp_responder_url(settings: Settings) -> str:
    """Where Apache asks: <[http] base_url>/ocsp, else `certdrop serve` on [http] listen
    (a wildcard address is asked on the loopback)."""
    if settings.ocsp_url:
        return settings.ocsp_url
    host, port = split_listen(settings.http.listen)
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)  # noqa: S104
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/ocsp"


def _ocsp_lines(settings: Settings) -> list[str]:
    return [
        "# revocation: every client certificate is checked with certdrop's OCSP responder",
        "# (`certdrop serve`) at each connection, so a revocation counts at once, without a",
        "# CRL file or a reload; a responder that cannot be reached refuses the client",
        "SSLOCSPEnable leaf",
        f'SSLOCSPDefaultResponder "{ocsp_responder_url(settings)}"',
        "SSLOCSPOverrideResponder on",
        "SSLOCSPUseRequestNonce on",
        "SSLOCSPResponderTimeout 5",
    ]


def _modssl_dn(name: x509.Name) -> str:
    """SSL_CLIENT_I_DN as mod_ssl 2.4 formats it: RFC 2253, most specific first."""
    short = {
        "countryName": "C",
        "stateOrProvinceName": "ST",
        "localityName": "L",
        "organizationName": "O",
        "organizationalUnitName": "OU",
        "commonName": "CN",
        "emailAddress": "emailAddress",
    }
    parts = []
    for rdn in reversed(list(name.rdns)):
        for attr in rdn:
            key = short.get(attr.oid._name, attr.oid.dotted_string)
            value = str(attr.value)
            value = re.sub(r'([,+"\\<>;])', r"\\\1", value)
            if value.startswith((" ", "#")):
                value = "\\" + value
            if value.endswith(" "):
                value = value[:-1] + "\\ "
            parts.append(f"{key}={value}")
    return ",".join(parts)
