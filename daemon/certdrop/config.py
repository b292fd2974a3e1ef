"""Settings: one validated, immutable object built from a TOML file and CERTDROP_ variables.

`load_settings(path)` is called once by the service or the CLI; the parts of the
result are handed down. Nothing imports settings globally.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from .errors import ConfigError

DEFAULT_CONFIG_PATH = Path("/etc/certdrop/certdrop.toml")

KeyType = Literal["rsa-2048", "rsa-3072", "rsa-4096", "ec-p256", "ec-p384"]
KeyUsageName = Literal[
    "digital_signature",
    "content_commitment",
    "key_encipherment",
    "data_encipherment",
    "key_agreement",
]
ExtendedKeyUsageName = Literal[
    "client_auth", "server_auth", "email_protection", "code_signing", "time_stamping"
]
CurveName = Literal["secp256r1", "secp384r1", "secp521r1"]

# Subject attributes a profile may have rules for and a request may carry.
SUBJECT_ATTRIBUTES = (
    "CN",
    "O",
    "OU",
    "C",
    "L",
    "ST",
    "emailAddress",
    "serialNumber",
    "DC",
    "title",
    "GN",
    "SN",
    "UID",
    "street",
    "postalCode",
)

_PROFILE_NAME = re.compile(r"[a-z0-9][a-z0-9_\-]{0,63}")


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PathsSettings(_Section):
    spool: Path = Path("/var/spool/certdrop")
    state: Path = Path("/var/lib/certdrop")
    database: str = ""


class CASettings(_Section):
    common_name: str = Field("certdrop CA", min_length=1, max_length=64)
    organization: str = Field("", max_length=64)
    organizational_unit: str = Field("", max_length=64)
    country: str = ""
    locality: str = Field("", max_length=128)
    key_type: KeyType = "ec-p256"
    validity_days: PositiveInt = 3650
    key_passphrase_file: str = ""
    # a two-tier CA (init --offline-root): the issuing CA's name constraints, the root
    permitted_email_domains: list[str] = []
    permitted_dns_domains: list[str] = []
    root_common_name: str = Field("", max_length=64)  # "" = common_name + " Root"
    root_validity_days: PositiveInt = 7300
    root_crl_days: int = Field(365, ge=2, le=3650)

    @field_validator("country")
    @classmethod
    def _country(cls, value: str) -> str:
        if value and not re.fullmatch(r"[A-Z]{2}", value):
            raise ValueError("must be a two-letter ISO 3166 country code in capitals, like BE")
        return value

    @field_validator("permitted_email_domains", "permitted_dns_domains")
    @classmethod
    def _permitted(cls, value: list[str]) -> list[str]:
        return [_domain(d) for d in value]

    @model_validator(mode="after")
    def _tiers(self) -> CASettings:
        if not self.root_common_name and len(self.root_name) > 64:
            raise ValueError(
                "common_name + ' Root' is longer than 64 characters; set root_common_name "
                "(at most 64)"
            )
        return self

    @property
    def root_name(self) -> str:
        """The offline root's common name."""
        return self.root_common_name or f"{self.common_name} Root"


class PolicySettings(_Section):
    default_profile: str = "client"
    lint: bool = True


class SubjectRule(_Section):
    """Rules for one subject attribute of a profile."""

    required: bool = False
    equals: str | None = None
    one_of: list[str] | None = None
    pattern: str | None = None
    domains: list[str] | None = None  # for e-mail attributes: the allowed domains
    unique: bool = False
    forbidden: bool = False

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"is not a valid regular expression ({exc})") from None
        return value

    @field_validator("domains")
    @classmethod
    def _domains(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else [_domain(d) for d in value]


def _domain(value: str) -> str:
    d = value.strip().lower()
    if not re.fullmatch(
        r"(?=.{1,253}$)([a-z0-9]([a-z0-9\-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9\-]{0,61}[a-z0-9])?",
        d,
    ):
        raise ValueError(f"{value!r} is not a DNS domain name (ASCII letters, digits, '-' and '.')")
    return d


def _default_subject() -> dict[str, SubjectRule]:
    return {"CN": SubjectRule(required=True, unique=True)}


class Profile(_Section):
    validity_days: PositiveInt = 365
    key_usage: list[KeyUsageName] = ["digital_signature", "key_encipherment"]
    extended_key_usage: list[ExtendedKeyUsageName] = ["client_auth"]
    approval: Literal["auto", "manual"] = "auto"
    rsa_min_bits: int = Field(2048, ge=2048, le=16384)
    rsa_max_bits: int = Field(8192, ge=2048, le=16384)
    ec_curves: list[CurveName] = ["secp256r1", "secp384r1"]
    allow_ed25519: bool = False
    email_domains: list[str] = []
    dns_domains: list[str] = []
    allow_dns_names: bool = False
    owner_binding: str = ""
    renew_before_days: int = Field(30, ge=0)
    key_type: KeyType = "ec-p256"  # for server-side key generation
    pkcs12_encryption: Literal["aes256", "legacy"] | None = None
    subject: dict[str, SubjectRule] = Field(default_factory=_default_subject)

    @field_validator("email_domains", "dns_domains")
    @classmethod
    def _domains(cls, value: list[str]) -> list[str]:
        return [_domain(d) for d in value]

    @field_validator("key_usage")
    @classmethod
    def _key_usage(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("must name at least one key usage, such as digital_signature")
        return value

    @field_validator("owner_binding")
    @classmethod
    def _owner_binding(cls, value: str) -> str:
        if value and (
            "{owner}" not in value
            or not re.fullmatch(r"[^@\s]+@[A-Za-z0-9.\-]+", value.replace("{owner}", "x"))
        ):
            raise ValueError(
                "must be an e-mail address template containing {owner}, "
                'such as "{owner}@example.org"'
            )
        return value

    @field_validator("subject")
    @classmethod
    def _subject(cls, value: dict[str, SubjectRule]) -> dict[str, SubjectRule]:
        for attr in value:
            if attr not in SUBJECT_ATTRIBUTES:
                raise ValueError(
                    f"unknown subject attribute {attr!r}; allowed: {', '.join(SUBJECT_ATTRIBUTES)}"
                )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Profile:
        if self.rsa_min_bits > self.rsa_max_bits:
            raise ValueError("rsa_min_bits must not be larger than rsa_max_bits")
        if self.renew_before_days >= self.validity_days:
            raise ValueError("renew_before_days must be smaller than validity_days")
        return self


class Pkcs12Settings(_Section):
    encryption: Literal["aes256", "legacy"] = "aes256"
    password_delivery: Literal["auto", "mail", "file"] = "auto"
    orphan_key_minutes: PositiveFloat = 10.0


class CRLSettings(_Section):
    validity_days: PositiveInt = 7
    refresh_before_days: float = Field(3, gt=0)
    distribution_point: str = ""

    @field_validator("distribution_point")
    @classmethod
    def _url(cls, value: str) -> str:
        if value and not re.fullmatch(r"(https?|ldap)://[^\s]+", value):
            raise ValueError("must be an http://, https:// or ldap:// URL")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> CRLSettings:
        if self.refresh_before_days >= self.validity_days:
            raise ValueError(
                "refresh_before_days must be smaller than validity_days, "
                "or the CRL would be refreshed continuously"
            )
        return self


class ApacheSettings(_Section):
    enabled: bool = False
    ca_file: Path = Path("/etc/apache2/certdrop/ca-bundle.pem")
    crl_file: Path = Path("/etc/apache2/certdrop/crl.pem")
    configtest_command: list[str] = ["apachectl", "configtest"]
    reload_command: list[str] = ["apachectl", "-k", "graceful"]
    debounce_seconds: float = Field(2.0, ge=0)
    command_timeout_seconds: PositiveFloat = 60.0


class ExpirySettings(_Section):
    warn_days: list[PositiveInt] = [30, 7, 1]
    notify_holder: bool = True
    notify_admin: bool = True
    sweep_minutes: PositiveFloat = 60

    @field_validator("warn_days")
    @classmethod
    def _warn_days(cls, value: list[int]) -> list[int]:
        return sorted(set(value), reverse=True)


# an e-mail address as configured: "addr@domain" or "Display Name <addr@domain>"
_MAIL_ADDR = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.\-]+@[A-Za-z0-9]([A-Za-z0-9.\-]*[A-Za-z0-9])?"
)
_MAIL_NAMED = re.compile(r"\s*([^<>\"]*?)\s*<([^<>\s]+)>\s*")


def _mail_address(value: str, key: str) -> str:
    text = value.strip()
    m = _MAIL_NAMED.fullmatch(text)
    addr = m.group(2) if m else text
    if not _MAIL_ADDR.fullmatch(addr):
        raise ValueError(
            f"{key} must be an e-mail address such as certdrop@example.org "
            '(or "Name <certdrop@example.org>")'
        )
    return text


class MailSettings(_Section):
    enabled: bool = False
    sender: str = "certdrop@localhost"
    admin: str = ""  # one address, or several separated by commas
    smtp_host: str = "localhost"
    smtp_port: int = Field(25, ge=1, le=65535)
    security: Literal["none", "starttls", "ssl"] = "none"
    username: str = ""
    password_file: str = ""
    timeout_seconds: PositiveFloat = 30.0
    ca_file: str = ""  # PEM CA certificates to trust for the SMTP server; "" = system store
    notify_requester: bool = True  # mail requesters: refused, pending, approved, denied, revoked

    @field_validator("sender")
    @classmethod
    def _sender(cls, value: str) -> str:
        return _mail_address(value, "the sender")

    @field_validator("admin")
    @classmethod
    def _admin(cls, value: str) -> str:
        parts = [p for p in (x.strip() for x in value.split(",")) if p]
        return ", ".join(_mail_address(p, "each admin address") for p in parts)

    @field_validator("smtp_host")
    @classmethod
    def _host(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9.\-:\[\]]{1,253}", value):
            raise ValueError("must be a host name or IP address, such as mail.example.org")
        return value


class WatchSettings(_Section):
    mode: Literal["auto", "events", "polling"] = "auto"
    poll_seconds: PositiveFloat = 2.0
    settle_seconds: float = Field(1.0, ge=0)
    max_request_bytes: int = Field(65536, ge=1024, le=16 * 1024 * 1024)
    rescan_seconds: PositiveFloat = 60.0


class MetricsSettings(_Section):
    listen: str = ""  # "" = off; else HOST:PORT for the Prometheus endpoint, e.g. 127.0.0.1:9102

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        if value:
            split_listen(value)
        return value


class HttpSettings(_Section):
    """`certdrop serve`: where it listens, and the public URL relying parties use."""

    listen: str = "127.0.0.1:8080"
    base_url: str = ""  # "" = issued certificates carry no AIA (and no CRL URL of their own)
    workers: int = Field(0, ge=0, le=64)  # processes answering; 0 = one per CPU

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        try:
            split_listen(value)
        except ValueError:
            raise ValueError(
                'must be HOST:PORT such as "127.0.0.1:8080", "0.0.0.0:80" or "[::]:8080"'
            ) from None
        return value

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        url = value.strip().rstrip("/")
        host = r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-]+)"
        if url and not re.fullmatch(rf"https?://{host}(:\d{{1,5}})?(/[A-Za-z0-9._~\-/%]*)?", url):
            raise ValueError(
                "must be an http:// or https:// URL without query or fragment, such as "
                '"http://ca.example.org" or "http://pki.example.org/certdrop"'
            )
        return url


def split_listen(value: str) -> tuple[str, int]:
    """'127.0.0.1:9102' / '[::1]:9102' / 'localhost:9102' -> (host, port)."""
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([A-Za-z0-9.\-]+):(\d{1,5})", value.strip())
    if not m:
        raise ValueError(
            'must be HOST:PORT such as "127.0.0.1:9102" or "[::1]:9102" (or "" for no metrics)'
        )
    host = m.group(1) or m.group(3)
    port = int(m.group(2) or m.group(4))
    if not 1 <= port <= 65535:
        raise ValueError("the port must be between 1 and 65535")
    return host, port


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="CERTDROP_",
        env_nested_delimiter="__",
        frozen=True,
        extra="forbid",
    )

    paths: PathsSettings = PathsSettings()
    ca: CASettings = CASettings()
    policy: PolicySettings = PolicySettings()
    profiles: dict[str, Profile] = Field(default_factory=lambda: {"client": Profile()})
    pkcs12: Pkcs12Settings = Pkcs12Settings()
    crl: CRLSettings = CRLSettings()
    apache: ApacheSettings = ApacheSettings()
    expiry: ExpirySettings = ExpirySettings()
    mail: MailSettings = MailSettings()
    watch: WatchSettings = WatchSettings()
    metrics: MetricsSettings = MetricsSettings()
    http: HttpSettings = HttpSettings()

    # the file these settings came from (not a key of the file)
    _source: Path | None = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = _TOML_FILE.get("path")
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
        return tuple(sources)

    @field_validator("profiles")
    @classmethod
    def _profiles(cls, value: dict[str, Profile]) -> dict[str, Profile]:
        if not value:
            raise ValueError("at least one profile must be defined, such as [profiles.client]")
        for name in value:
            if not _PROFILE_NAME.fullmatch(name):
                raise ValueError(
                    f"profile name {name!r} is not allowed; use lower-case letters, digits, '_' "
                    "and '-' (it is also the inbox sub-folder name)"
                )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.policy.default_profile not in self.profiles:
            raise ValueError(
                f"[policy] default_profile = {self.policy.default_profile!r} names no profile; "
                f"defined: {', '.join(sorted(self.profiles))}"
            )
        if self.mail.enabled and self.pkcs12.password_delivery == "mail" and not self.mail.sender:
            raise ValueError("[mail] sender must be set when passwords are delivered by mail")
        if self.pkcs12.password_delivery == "mail" and not self.mail.enabled:
            raise ValueError(
                '[pkcs12] password_delivery = "mail" needs [mail] enabled = true; '
                'use "file" or "auto" otherwise'
            )
        return self

    # --- derived locations -------------------------------------------------------------
    @property
    def spool(self) -> Path:
        return self.paths.spool

    @property
    def state(self) -> Path:
        return self.paths.state

    @property
    def database_url(self) -> str:
        return self.paths.database or f"sqlite:///{self.paths.state / 'index.sqlite'}"

    @property
    def crl_url(self) -> str:
        """The CRL distribution point issued certificates carry ("" = none): `[crl]
        distribution_point` when set (another place, an ldap:// URL), else under base_url."""
        base = self.http.base_url
        return self.crl.distribution_point or (f"{base}/crl.der" if base else "")

    @property
    def ocsp_url(self) -> str:
        return f"{self.http.base_url}/ocsp" if self.http.base_url else ""

    @property
    def ca_issuers_url(self) -> str:
        return f"{self.http.base_url}/ca.cer" if self.http.base_url else ""

    def profile_pkcs12_encryption(self, profile: str) -> str:
        override = self.profiles[profile].pkcs12_encryption
        return override or self.pkcs12.encryption


# The TOML file for the next Settings() construction (pydantic-settings builds
# sources from the class; a contextvar-like dict keeps load_settings re-entrant
# enough for one thread at a time).
_TOML_FILE: dict[str, Path | None] = {}


def _format_error(err: Mapping[str, Any]) -> str:
    loc = ".".join(str(part) for part in err.get("loc", ()) if part != "__root__")
    msg = str(err.get("msg", "invalid"))
    msg = msg.removeprefix("Value error, ")
    value = err.get("input")
    where = loc or "configuration"
    if err.get("type") == "missing":
        return f"{where}: missing"
    if err.get("type") == "extra_forbidden":
        return f"{where}: unknown key (value {value!r}); check the spelling against config/certdrop.toml"
    if isinstance(value, Mapping) or loc == "":
        return f"{where}: {msg}"
    return f"{where} = {value!r}: {msg}"


def _resolve(base: Path, p: Path) -> Path:
    return p if p.is_absolute() else (base / p).resolve()


def load_settings(path: Path | None, environ: Mapping[str, str] | None = None) -> Settings:
    """Build the settings from `path` (TOML) and the environment.

    Relative paths in the file are taken relative to the file's folder. Raises
    ConfigError with one line per problem, each naming the key, the value and what
    is allowed.
    """
    env = os.environ if environ is None else environ
    if path is None:
        path = Path(env.get("CERTDROP_CONFIG") or DEFAULT_CONFIG_PATH)
    if not path.exists():
        raise ConfigError(
            f"configuration file {path} does not exist; pass --config PATH or set CERTDROP_CONFIG"
        )
    try:
        import tomllib

        with open(path, "rb") as fh:
            tomllib.load(fh)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"configuration file {path} cannot be read: {exc}") from None

    saved = dict(os.environ) if environ is not None else None
    try:
        if environ is not None:
            os.environ.clear()
            os.environ.update(environ)
        _TOML_FILE["path"] = path
        try:
            settings = Settings()
        finally:
            _TOML_FILE.pop("path", None)
    except ValidationError as exc:
        lines = [_format_error(e) for e in exc.errors()]
        raise ConfigError(f"invalid configuration in {path}: " + "; ".join(lines)) from None
    finally:
        if saved is not None:
            os.environ.clear()
            os.environ.update(saved)

    base = path.resolve().parent
    paths = settings.paths.model_copy(
        update={
            "spool": _resolve(base, settings.paths.spool),
            "state": _resolve(base, settings.paths.state),
        }
    )
    apache = settings.apache.model_copy(
        update={
            "ca_file": _resolve(base, settings.apache.ca_file),
            "crl_file": _resolve(base, settings.apache.crl_file),
        }
    )
    ca = settings.ca
    if ca.key_passphrase_file:
        ca = ca.model_copy(
            update={"key_passphrase_file": str(_resolve(base, Path(ca.key_passphrase_file)))}
        )
    mail = settings.mail
    if mail.password_file:
        mail = mail.model_copy(
            update={"password_file": str(_resolve(base, Path(mail.password_file)))}
        )
    if mail.ca_file:
        mail = mail.model_copy(update={"ca_file": str(_resolve(base, Path(mail.ca_file)))})
    resolved = settings.model_copy(
        update={"paths": paths, "apache": apache, "ca": ca, "mail": mail}
    )
    object.__setattr__(resolved, "_source", path.resolve())
    return resolved


def effective_values(settings: Settings) -> dict[str, Any]:
    """The settings as plain data (for check-config), paths as strings."""
    return settings.model_dump(mode="json")
