"""Which licence a CustomerInstance runs under: one the operator issues, or a billing system's, verified.

Whatever a Secret holds, the answer is a ``LicenceDecision`` (the verified licence, or why there is
none), never an exception: fail closed, no valid licence, no service.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from iotenant.customer_instance.kept_secrets import Undecodable, decode
from iotenant.kube.client import ClusterAPI
from iotenant.licensing import licence as licences
from iotenant.licensing.plans import Plan
from iotenant.licensing.signing_keys import KeyRing
from iotenant.licensing.trusted_issuers import TrustedIssuers
from iotenant.settings import OperatorSettings
from iotenant.timestamps import rfc3339
from iotenant.vocabulary.kinds import SECRET

log = logging.getLogger("iotenant.customer_instance")

# spec.licence.secretRef names a namespace the operator does not take billing licences from. One
# answer for every such Secret, existing or not: the status reveals nothing about it.
UNTRUSTED_LICENCE_SOURCE = "UntrustedLicenceSource"
# Another, older CustomerInstance has the same customerId.
DUPLICATE_CUSTOMER_ID = "DuplicateCustomerId"
# Licence reasons that retrying cannot fix until someone changes the licence (or the instances).
UNFIXABLE_LICENCE_REASONS = {
    licences.MALFORMED, licences.UNKNOWN_KEY, licences.BAD_SIGNATURE, licences.WRONG_AUDIENCE, licences.WRONG_SUBJECT,
    licences.WRONG_ISSUER, licences.WEAK_KEY, licences.ISSUED_IN_FUTURE, UNTRUSTED_LICENCE_SOURCE, DUPLICATE_CUSTOMER_ID,
}
# Reasons of a licence the operator just wrote: each is told in an Event.
ISSUING_REASONS = ("Issued", "Reissued", "Resigned", "Renewed")


@dataclass(frozen=True)
class LicenceDecision:
    """The licence in force (verified), or why there is none."""

    verified: licences.VerifiedLicence | None
    reason: str
    message: str
    serving: bool
    expired_in_grace: bool = False

    @property
    def valid(self) -> bool:
        return self.verified is not None and not self.verified.expired

    @property
    def claims(self) -> licences.Claims | None:
        return self.verified.claims if self.verified else None


def duplicate(customer_id: str, holder: str) -> LicenceDecision:
    """Made before the older instance claimed the customerId: kept, but serving nobody."""
    return LicenceDecision(None, DUPLICATE_CUSTOMER_ID,
                           f"customerId {customer_id!r} belongs to CustomerInstance {holder}, which is older", serving=False)


class LicenceDecider:
    def __init__(self, api: ClusterAPI, settings: OperatorSettings, catalogue: dict[str, Plan], keyring: Callable[[], KeyRing],
                 trusted_issuers: TrustedIssuers, clock: Callable[[], float]) -> None:
        self.api = api
        self.settings = settings
        self.catalogue = catalogue
        self.keyring = keyring
        self.trusted_issuers = trusted_issuers
        self.clock = clock

    def external(self, spec: dict[str, Any]) -> LicenceDecision:
        """A billing licence, read only from a trusted namespace and verified only by the keys of the
        issuer it names."""
        ref = spec["licence"]["secretRef"]
        if ref.get("namespace") not in self.settings.billing_namespaces:
            trusted = ", ".join(self.settings.billing_namespaces) or "none"
            return LicenceDecision(None, UNTRUSTED_LICENCE_SOURCE,
                                   f"spec.licence.secretRef must name a Secret in a namespace trusted for billing licences ({trusted})",
                                   serving=False)
        secret = self.api.get(SECRET, ref["name"], ref["namespace"])
        try:
            token = decode(secret, "licence.jwt")
        except Undecodable as error:
            return LicenceDecision(None, licences.MALFORMED, f"Secret {ref['namespace']}/{ref['name']}: {error}", serving=False)
        if token is None:
            what = "has no key licence.jwt" if secret else "does not exist"
            return LicenceDecision(None, licences.MISSING, f"Secret {ref['namespace']}/{ref['name']} {what}", serving=False)
        issuer = self.trusted_issuers.issuer_of(licences.key_id_of(token))
        try:
            verified = licences.verify(token, self.trusted_issuers.jwks_of(issuer), spec["customerId"], now=self.clock(),
                                       expected_issuer=issuer)
        except licences.LicenceInvalid as invalid:
            return LicenceDecision(None, invalid.reason, invalid.message, serving=False)
        return self._in_force(verified)

    def _in_force(self, verified: licences.VerifiedLicence) -> LicenceDecision:
        """A verified billing licence: serving, serving within the expiry grace, or suspended after it."""
        if not verified.expired:
            return LicenceDecision(verified, "Verified", f"licence {verified.claims.jti} verified", serving=True)
        overdue = self.clock() - verified.claims.exp
        grace = self.settings.expiry_grace_seconds
        expired_at = rfc3339(verified.claims.exp)
        if overdue < grace:
            remaining = rfc3339(verified.claims.exp + grace)
            message = f"licence expired at {expired_at}; service continues until {remaining}, then the instance is suspended"
            return LicenceDecision(verified, licences.EXPIRED, message, serving=True, expired_in_grace=True)
        message = f"licence expired at {expired_at} and the grace period is over: the instance is suspended"
        return LicenceDecision(verified, licences.EXPIRED, message, serving=False)

    def issued(self, spec: dict[str, Any], live_token: str | None) -> LicenceDecision:
        """The operator's own licence: the live one while it still says what the plan says, is fresh and
        signed by the active key; else a new one, with the reason."""
        plan = self.catalogue.get(spec.get("plan", ""))
        if plan is None:
            return LicenceDecision(None, "UnknownPlan", f"plan {spec.get('plan')!r} is not in the plan catalogue", serving=False)
        ring = self.keyring()
        validity = int(spec.get("licence", {}).get("validityDays", 365)) * 86400
        now = self.clock()
        reason = "Issued"
        if live_token:
            try:
                current = licences.verify(live_token, ring.public_jwks, spec["customerId"], now=now, expected_issuer=self.settings.issuer)
                unchanged = (
                    current.claims.plan == plan.name
                    and current.claims.features == plan.features
                    and current.claims.limits == plan.limits
                    and current.claims.monitoring == plan.monitoring
                    and current.claims.validity_seconds == validity
                    and current.claims.iss == self.settings.issuer
                )
                fresh = not current.expired and current.claims.remaining_fraction(now) > self.settings.renew_fraction
                if unchanged and fresh and current.key_id == ring.active_kid:
                    return LicenceDecision(current, "Verified", f"licence {current.claims.jti} verified", serving=True)
                reason = "Reissued" if not unchanged else "Resigned" if current.key_id != ring.active_kid else "Renewed"
            except licences.LicenceInvalid as invalid:
                log.info("re-issuing the licence of %s: %s", spec["customerId"], invalid)
        token = licences.sign(plan.claims(spec["customerId"], self.settings.issuer, validity, now=now), ring.active)
        verified = licences.verify(token, ring.public_jwks, spec["customerId"], now=now)
        return LicenceDecision(verified, reason, f"licence {verified.claims.jti} issued for plan {plan.name}", serving=True)

    def jwks_for(self, decision: LicenceDecision, external: bool) -> dict[str, Any]:
        """What the workloads verify with: the keys of the issuer that signed their licence, and no other."""
        if external:
            return self.trusted_issuers.jwks_of(decision.verified.claims.iss if decision.verified else None)
        return self.keyring().public_jwks
