"""pkilint's RFC 5280 linters, built once and reused for every certificate and CRL."""

from __future__ import annotations

import threading
from typing import Any

from pkilint import loader
from pkilint.pkix import (
    certificate,
    create_attribute_decoder,
    create_extension_decoder,
    crl,
    extension,
    name,
)
from pkilint.validation import ValidationFindingSeverity

# findings at or above this severity refuse a certificate (FATAL=0 ... WARNING=2)
THRESHOLD = ValidationFindingSeverity.WARNING


class Linter:
    """Thread-safe wrapper around pkilint validators (built once, not per document)."""

    def __init__(self) -> None:
        self._cert_validator = certificate.create_pkix_certificate_validator_container(
            certificate.create_decoding_validators(
                name.ATTRIBUTE_TYPE_MAPPINGS, extension.EXTENSION_MAPPINGS
            ),
            [
                certificate.create_issuer_validator_container([]),
                certificate.create_validity_validator_container(),
                certificate.create_subject_validator_container([]),
                certificate.create_extensions_validator_container([]),
                certificate.create_spki_validator_container([]),
            ],
        )
        self._crl_validator = crl.create_pkix_crl_validator_container(
            [
                create_attribute_decoder(name.ATTRIBUTE_TYPE_MAPPINGS),
                create_extension_decoder(extension.EXTENSION_MAPPINGS),
            ],
            [
                crl.create_issuer_validator_container([]),
                crl.create_validity_validator_container([]),
                crl.create_extensions_validator_container([]),
            ],
        )
        self._cert_loader = loader.RFC5280CertificateDocumentLoader()
        self._crl_loader = loader.RFC5280CertificateListDocumentLoader()
        self._lock = threading.Lock()

    @staticmethod
    def _findings(results: Any, threshold: ValidationFindingSeverity) -> list[str]:
        out: list[str] = []
        for result in results:
            for desc in result.finding_descriptions:
                if desc.finding.severity <= threshold:
                    text = f"{desc.finding.severity.name} {desc.finding.code}"
                    if desc.message:
                        text += f" ({desc.message})"
                    out.append(text)
        return out

    def certificate(
        self, der: bytes, threshold: ValidationFindingSeverity = THRESHOLD
    ) -> list[str]:
        """Findings of WARNING or worse for a DER certificate ([] = clean)."""
        with self._lock:
            try:
                doc = self._cert_loader.load_der_document(der, "certificate")
            except ValueError as exc:
                return [f"FATAL undecodable ({exc})"]
            return self._findings(self._cert_validator.validate(doc.root), threshold)

    def crl(self, der: bytes, threshold: ValidationFindingSeverity = THRESHOLD) -> list[str]:
        with self._lock:
            try:
                doc = self._crl_loader.load_der_document(der, "crl")
            except ValueError as exc:
                return [f"FATAL undecodable ({exc})"]
            return self._findings(self._crl_validator.validate(doc.root), threshold)

    def all_certificate_findings(self, der: bytes) -> list[str]:
        """Every finding including NOTICE and INFO (for tests and reports)."""
        return self.certificate(der, ValidationFindingSeverity.INFO)


_shared: Linter | None = None
_shared_lock = threading.Lock()


def shared_linter() -> Linter:
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = Linter()
        return _shared
