"""pkilint's RFC 5280 and RFC 6960 linters, built once and reused for every certificate, CRL
and OCSP response shape.

pkilint walks a document's tree and, at every node, asks every validator of a container
whether it matches that node (`NodeVisitor.match`: path, path pattern, ASN.1 type,
predicate): thousands of such questions per certificate, of which few say yes, and the
asking is a good part of the time a certificate takes to lint. `_Dispatch` answers the
part of each question that depends only on the node's path and type once per (path,
type) and then remembers it, and still asks whatever depends on the node's contents. It
makes the same validator calls on the same nodes in the same order as pkilint, so the
results are the same (tests/unit/authority/test_lint_dispatch.py compares every result,
findings or not, on good and broken certificates and CRLs).
"""

from __future__ import annotations

import threading
from typing import Any

from pkilint import loader
from pkilint.document import NodeVisitor
from pkilint.pkix import (
    certificate,
    create_attribute_decoder,
    create_extension_decoder,
    crl,
    extension,
    name,
    ocsp,
)
from pkilint.pkix.certificate.certificate_extension import ExtendedKeyUsageCriticalityValidator
from pkilint.validation import (
    TypeMatchingValidator,
    ValidationFindingSeverity,
    ValidatorContainer,
)

# findings at or above this severity refuse a certificate (FATAL=0 ... WARNING=2)
THRESHOLD = ValidationFindingSeverity.WARNING

# match() overrides that are `NodeVisitor.match(node) and <a test of the node's contents>`
# (read in pkilint 0.13.3; pyproject keeps pkilint below 0.14): a node that fails the path and
# type tests fails them too. Any other override is asked at every node, as pkilint does.
_MATCH_AFTER_NODE_VISITOR = frozenset(
    {
        extension.ExtensionCriticalityValidator.match,
        TypeMatchingValidator.match,
        ExtendedKeyUsageCriticalityValidator.match,
    }
)
_NODE_VISITOR_FIELDS = ("_path", "_path_re", "_pdu_class", "_pdu_supertype", "_predicate")
_PLANS_LIMIT = 20_000  # (path, type) pairs remembered per container; then forgotten


def _may_match(v: Any, path: str, cls: type) -> bool:
    """NodeVisitor.match's tests that depend only on a node's path and type."""
    if v._path is not None and v._path != path:
        return False
    if v._path_re is not None and v._path_re.match(path) is None:
        return False
    return v._pdu_class is None or issubclass(cls, v._pdu_class)


class _Dispatch:
    """`ValidatorContainer._validate_rec` for one container: every validator that matches
    a node validates it, in the container's order, then the node's children (read after
    the validators ran: decoding validators add children) are visited in order.

    Per (node path, node type): the validators that can match, each with whether it must
    still be asked (a predicate, a supertype, an override of match) or matches for sure.
    The validators are the container's when the dispatch is installed (certdrop builds
    its containers once and never changes them).
    """

    def __init__(self, container: Any) -> None:
        self.validators = tuple(container.validators)
        self.plans: dict[tuple[str, type], tuple[tuple[Any, bool], ...]] = {}

    def _plan(self, path: str, cls: type) -> tuple[tuple[Any, bool], ...]:
        plan: list[tuple[Any, bool]] = []
        for v in self.validators:
            match = type(v).match
            if match is NodeVisitor.match:
                if _may_match(v, path, cls):
                    plan.append((v, v._pdu_supertype is not None or v._predicate is not None))
            elif match in _MATCH_AFTER_NODE_VISITOR:
                if _may_match(v, path, cls):
                    plan.append((v, True))
            else:
                plan.append((v, True))
        if len(self.plans) >= _PLANS_LIMIT:
            self.plans.clear()
        got = self.plans[(path, cls)] = tuple(plan)
        return got

    def __call__(self, node: Any, results: list[Any]) -> None:
        key = (node.path, type(node.pdu))
        plan = self.plans.get(key)
        if plan is None:
            plan = self._plan(*key)
        for v, ask in plan:
            if ask and not v.match(node):
                continue
            result = v.validate_wrapper(node)
            if isinstance(result, list):
                results += result
            else:
                results.append(result)
        for child in node.children.values():
            self(child, results)


def _stock_container(v: Any) -> bool:
    cls = type(v)
    return (
        isinstance(v, ValidatorContainer)
        and cls._validate_rec is ValidatorContainer._validate_rec
        and cls.validate is ValidatorContainer.validate
    )


def _walk_containers(container: Any, seen: list[Any]) -> None:
    seen.append(container)
    for v in container.validators:
        if isinstance(v, ValidatorContainer):
            _walk_containers(v, seen)


def fast_dispatch(*tops: Any) -> bool:
    """Give the containers `tops` and the containers inside them `_Dispatch`; False (and
    pkilint's own walk everywhere) if any of them or their validators is not as expected."""
    containers: list[Any] = []
    for top in tops:
        _walk_containers(top, containers)
    for c in containers:
        if not _stock_container(c) or c.__dict__.get("_validate_rec") is not None:
            return False
        for v in c.validators:
            if "match" in vars(v) or not all(hasattr(v, f) for f in _NODE_VISITOR_FIELDS):
                return False
    for c in containers:
        c._validate_rec = _Dispatch(c)
    return True


class Linter:
    """Thread-safe wrapper around pkilint validators (built once, not per document):
    `certificate_validator` and `crl_validator` are pkilint's validator containers."""

    def __init__(self, *, fast: bool = True) -> None:
        """`fast`: certdrop's dispatch (`_Dispatch`); False: pkilint's own walk (the bench's
        "pkilint alone", and the reference the tests compare the dispatch with)."""
        self.certificate_validator = certificate.create_pkix_certificate_validator_container(
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
        self.crl_validator = crl.create_pkix_crl_validator_container(
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
        self.fast = fast and fast_dispatch(self.certificate_validator, self.crl_validator)
        # RFC 6960 responses (what `certdrop serve` answers), as pkilint's lint_ocsp_response
        self.ocsp_validator = ocsp.create_pkix_ocsp_response_validator_container(
            [
                ocsp.create_response_decoder(),
                create_attribute_decoder(name.ATTRIBUTE_TYPE_MAPPINGS),
                create_extension_decoder(extension.EXTENSION_MAPPINGS),
            ],
            [],
        )
        self._cert_loader = loader.RFC5280CertificateDocumentLoader()
        self._crl_loader = loader.RFC5280CertificateListDocumentLoader()
        self._ocsp_loader = loader.RFC6960OCSPResponseDocumentLoader()
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

    def _validate(self, der: bytes, kind: str) -> list[Any] | str:
        """pkilint's results for the DER `kind` ("certificate", "crl" or "ocsp"), or the
        finding that it does not decode."""
        loader_, validator = {
            "certificate": (self._cert_loader, self.certificate_validator),
            "crl": (self._crl_loader, self.crl_validator),
            "ocsp": (self._ocsp_loader, self.ocsp_validator),
        }[kind]
        with self._lock:
            try:
                doc = loader_.load_der_document(der, kind)
            except ValueError as exc:
                return f"FATAL undecodable ({exc})"
            return list(validator.validate(doc.root))

    def certificate(
        self, der: bytes, threshold: ValidationFindingSeverity = THRESHOLD
    ) -> list[str]:
        """Findings of WARNING or worse for a DER certificate ([] = clean)."""
        got = self._validate(der, "certificate")
        return [got] if isinstance(got, str) else self._findings(got, threshold)

    def crl(self, der: bytes, threshold: ValidationFindingSeverity = THRESHOLD) -> list[str]:
        got = self._validate(der, "crl")
        return [got] if isinstance(got, str) else self._findings(got, threshold)

    def ocsp_response(
        self, der: bytes, threshold: ValidationFindingSeverity = THRESHOLD
    ) -> list[str]:
        """Findings of WARNING or worse for a DER OCSP response ([] = clean)."""
        got = self._validate(der, "ocsp")
        return [got] if isinstance(got, str) else self._findings(got, threshold)

    def results(self, der: bytes, kind: str = "certificate") -> list[tuple[str, str, str]] | str:
        """Every validation result, with or without findings, as (validator, node path,
        findings), or the finding that `der` does not decode: for tests that compare two
        ways of linting."""
        got = self._validate(der, kind)
        if isinstance(got, str):
            return got
        return [(r.validator.name, r.node.path, repr(r.finding_descriptions)) for r in got]


_shared: Linter | None = None
_shared_lock = threading.Lock()


def shared_linter() -> Linter:
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = Linter()
        return _shared
