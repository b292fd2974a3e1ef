"""The p12 password by mail: into the mail queue, in the certificate's transaction."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from ..clock import Clock
from ..config import MailSettings
from ..index.store import Transaction
from ..issue.delivery import PasswordChannel, PasswordFiles
from .alerts import queue_admin_alert
from .queue import enqueue

log = logging.getLogger("certdrop.mail")


class MailPasswordChannel:
    """Puts the p12 password into the mail queue, in the certificate's transaction.

    The message carries the password only: never the p12, which stays in the
    outbox. A certificate without an e-mail address gets the file channel
    (state/passwords/NAME.txt) instead, and the admin is told to hand it over.
    """

    def __init__(
        self, mail: MailSettings, outbox: Path, files: PasswordFiles, clock: Clock
    ) -> None:
        self.mail = mail
        self.outbox = outbox
        self.files = files
        self.clock = clock

    def __call__(
        self,
        conn: Transaction,
        name: str,
        email: str,
        serial: str,
        password: str,
        notes: Sequence[str] = (),
        request: str = "",
    ) -> Path | None:
        now = self.clock.now()
        if not email:
            path = self.files(conn, name, email, serial, password, notes, request)
            log.warning(
                "%s.p12 (serial %s): the certificate has no e-mail address, so its password "
                "cannot be mailed; it is in %s for the CA operator to hand over",
                name,
                serial,
                path,
            )
            queue_admin_alert(
                conn,
                self.mail,
                f"hand over the p12 password for {name}",
                f"certdrop issued certificate {serial} for {request or name}.req with a PKCS#12 "
                "bundle,\n"
                f"{self.outbox / (name + '.p12')}.\n\n"
                "The certificate has no e-mail address, so the password of the bundle could\n"
                f"not be mailed to its holder. It is in {path} (readable by the\n"
                "CA operator only). Give it to the holder by another channel than the p12\n"
                "itself, then delete the file.\n",
                now,
            )
            return path
        enqueue(
            conn,
            self.mail,
            "password",
            [("", email)],
            f"password for your certificate {name}.p12",
            password_mail_body(name, serial, password, self.outbox, notes, request),
            now,
            serial=serial,
        )
        return None

    def sync(self) -> None:
        """Make password files written for holders without an e-mail address durable."""
        self.files.sync()


def password_mail_body(
    name: str,
    serial: str,
    password: str,
    outbox: Path,
    notes: Sequence[str] = (),
    request: str = "",
) -> str:
    remarks = "".join(f"Please note: {n}\n\n" for n in notes)
    return remarks + (
        "Hello,\n\n"
        f"certdrop issued a certificate for your request {request or name}.req "
        f"(serial {serial}).\n"
        f"Its PKCS#12 bundle {name}.p12 (your certificate and private key, for browsers\n"
        "and mail clients) is NOT attached to this mail; collect it from the outbox:\n\n"
        f"    {outbox / (name + '.p12')}\n\n"
        f"The password to import {name}.p12 is:\n\n"
        f"    {password}\n\n"
        "Keep the password apart from the file, and delete this mail once the bundle\n"
        "is imported. If you did not ask for this certificate, tell the CA operator.\n"
    )


def choose_password_channel(
    delivery: str,
    mail: MailSettings,
    state: Path,
    outbox: Path,
    clock: Clock,
) -> PasswordChannel:
    """[pkcs12] password_delivery: "file", or "mail"/"auto" (mail when [mail] is enabled).

    With "mail" or "auto" and mail enabled, a certificate without an e-mail address
    still gets its password in the file (see MailPasswordChannel): refusing would
    throw away a certificate that was issued correctly.
    """
    files = PasswordFiles(state)
    if delivery == "file" or not mail.enabled:
        return files
    return MailPasswordChannel(mail, outbox, files, clock)
