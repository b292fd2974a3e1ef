"""The one error hierarchy of certdrop.

A `CertdropError` carries a message written for the person at the keyboard (or
reading a `.reason` file): it is shown as is, without a traceback. Anything that
is not a `CertdropError` is a bug and is logged with its traceback.
"""

from __future__ import annotations


class CertdropError(Exception):
    """Base class: the message is for users and is shown without traceback."""

    exit_code = 1


class ConfigError(CertdropError):
    """The configuration file or environment is invalid."""

    exit_code = 78  # EX_CONFIG


class CAError(CertdropError):
    """The CA key or certificate is missing, unusable or unsafe."""


class RequestError(CertdropError):
    """A dropped request cannot be read or parsed (the reason goes to the user)."""


class StoreError(CertdropError):
    """The index cannot be opened or is in an unexpected state."""


class IndexUnavailable(StoreError):
    """The index cannot be read or written right now (disk full, I/O error, locked).

    Transient: the work in hand is kept and tried again later, never refused.
    """


class SerialCollision(StoreError):
    """The serial is already in the index (the caller draws a new one)."""


class LockError(CertdropError):
    """Another certdrop daemon holds the state folder."""


class NotFoundError(CertdropError):
    """A certificate, request or name that an operator command refers to does not exist."""


class PublishError(CertdropError):
    """Writing the CRL or the Apache files, or reloading Apache, failed."""


class MailError(CertdropError):
    """An e-mail could not be handed to the SMTP server."""


class LintError(CertdropError):
    """A to-be-signed certificate or CRL has lint findings of WARNING or worse."""


class ServeError(CertdropError):
    """`certdrop serve` cannot start or cannot answer (address in use, no CA, no aiohttp)."""
