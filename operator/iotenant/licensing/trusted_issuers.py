"""The billing systems whose licences the operator trusts: each a named issuer with its own keys.

The file (``--trusted-issuers``, Helm value ``trustedIssuers``) maps an issuer name to a JWKS:
``{"billing-eu": {"keys": [...]}}``. A licence is trusted only when a key of one issuer verifies it
and its ``iss`` claim names that same issuer; the operator's own keys verify only the licences the
operator issued. Keys that cannot serve (not RSA, no ``kid``, a ``kid`` two issuers claim) are left
out and reported, never fatal to the others; an RSA key shorter than 2048 bits is kept and reported,
and every licence it signed is refused as ``WeakSigningKey``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iotenant.licensing import licence as licences

from iotenant.licensing import keys as licence_keys

log = logging.getLogger("iotenant.trusted_issuers")


class TrustedIssuersError(ValueError):
    """The file is not a mapping of issuer names to JWKS documents."""


@dataclass(frozen=True)
class TrustedIssuers:
    by_issuer: dict[str, dict[str, Any]] = field(default_factory=dict)  # issuer -> JWKS of its usable keys
    problems: tuple[str, ...] = ()

    def issuer_of(self, kid: str | None) -> str | None:
        for issuer, jwks in self.by_issuer.items():
            if any(key["kid"] == kid for key in jwks["keys"]):
                return issuer
        return None

    def jwks_of(self, issuer: str | None) -> dict[str, Any]:
        return self.by_issuer.get(issuer or "", {"keys": []})

    @classmethod
    def parse(cls, document: Any, operator_issuer: str) -> "TrustedIssuers":
        if not isinstance(document, dict) or "keys" in document:
            raise TrustedIssuersError('trusted issuers must map issuer names to JWKS documents: {"<issuer>": {"keys": [...]}}')
        problems: list[str] = []
        usable: dict[str, list[dict[str, Any]]] = {}
        owners: dict[str, set[str]] = {}
        for issuer, jwks in document.items():
            if not isinstance(issuer, str) or not issuer or issuer == operator_issuer:
                problems.append(f"issuer {issuer!r}: not a usable name (empty, or the operator's own)")
                continue
            keys = jwks.get("keys") if isinstance(jwks, dict) else None
            if not isinstance(keys, list):
                problems.append(f"issuer {issuer!r}: not a JWKS document")
                continue
            for index, key in enumerate(keys):
                kid = key.get("kid") if isinstance(key, dict) else None
                if not isinstance(kid, str) or not kid:
                    problems.append(f"issuer {issuer!r}, key {index}: no kid")
                    continue
                try:
                    licences.trusted_public_key(key)
                except licences.LicenceInvalid as invalid:
                    problems.append(f"issuer {issuer!r}, key {kid!r}: {invalid.message}")
                    if invalid.reason != licences.WEAK_KEY:
                        continue
                usable.setdefault(issuer, []).append(key)
                owners.setdefault(kid, set()).add(issuer)
        shared = {kid for kid, names in owners.items() if len(names) > 1}
        problems += [f"key {kid!r} is claimed by several issuers ({', '.join(sorted(owners[kid]))}): trusted for none" for kid in sorted(shared)]
        by_issuer = {issuer: licence_keys.jwks([key for key in keys if key["kid"] not in shared]) for issuer, keys in usable.items()}
        return cls(by_issuer={issuer: jwks for issuer, jwks in by_issuer.items() if jwks["keys"]}, problems=tuple(problems))

    @classmethod
    def load(cls, path: Path | None, operator_issuer: str) -> "TrustedIssuers":
        if path is None:
            return cls()
        try:
            document = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise TrustedIssuersError(f"{path}: {error}") from error
        trusted = cls.parse(document, operator_issuer)
        for problem in trusted.problems:
            log.error("trusted issuers (%s): %s", path, problem)
        return trusted
