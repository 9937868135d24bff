"""The licence a workload runs under: verified from the mounted files, re-read when they change.

Defence in depth: the operator verified the licence, and the workload verifies it again with the
published JWKS before trusting any limit or feature in it.

An expired licence stays in force for the operator's grace period (``--licence-grace-seconds``,
rendered from the operator's ``--expiry-grace-seconds``): while the operator says service continues,
the workloads serve and store; afterwards the operator suspends the instance.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path

from iotenant.licensing import licence as licences

log = logging.getLogger("iotenant.licence")


class MountedLicence:
    # The files are looked at no more often than this: the API asks on every request.
    RECHECK_SECONDS = 1.0

    def __init__(self, licence_file: Path, jwks_file: Path, customer_id: str | None, grace_seconds: int = 0) -> None:
        self.licence_file = licence_file
        self.grace_seconds = max(0, grace_seconds)
        self.jwks_file = jwks_file
        self.customer_id = customer_id
        self._lock = threading.Lock()
        self._stamp: tuple[float, float] | None = None
        self._current: licences.VerifiedLicence | None = None
        self._problem = "not loaded"
        self._checked = 0.0

    def _stamps(self) -> tuple[float, float]:
        return (os.stat(self.licence_file).st_mtime, os.stat(self.jwks_file).st_mtime)

    def load(self) -> licences.VerifiedLicence:
        """Verify now; raises LicenceInvalid with the reason when the licence cannot be trusted."""
        try:
            token = self.licence_file.read_text()
            jwks = json.loads(self.jwks_file.read_text())
            verified = licences.verify(token, jwks, self.customer_id)
        except licences.LicenceInvalid:
            raise
        except (OSError, ValueError) as error:  # unreadable, not UTF-8, not JSON
            raise licences.LicenceInvalid(licences.MALFORMED, f"cannot read the mounted licence: {error}") from error
        except Exception as error:  # whatever a hostile token or key set makes the JWT library raise
            raise licences.LicenceInvalid(licences.MALFORMED, f"the licence cannot be verified: {type(error).__name__}") from error
        if verified.claims.exp + self.grace_seconds <= time.time():
            licences.require_current(verified)
        with self._lock:
            self._current, self._problem = verified, ""
            self._stamp = self._stamps()
        return verified

    def refresh(self) -> licences.VerifiedLicence | None:
        """Re-verify when a mounted file changed (or the licence expired); the licence in force, or None."""
        now = time.monotonic()
        if now - self._checked < self.RECHECK_SECONDS:
            return self.current
        self._checked = now
        try:
            changed = self._stamps() != self._stamp
        except OSError as error:
            changed, self._problem = True, str(error)
        expired = self._current is not None and self._current.claims.exp + self.grace_seconds <= time.time()
        if changed or expired or self._current is None:
            try:
                verified = self.load()
                log.info("licence %s in force: plan %s", verified.claims.jti, verified.claims.plan)
            except licences.LicenceInvalid as error:
                with self._lock:
                    self._current, self._problem = None, str(error)
                log.error("no valid licence: %s", error)
        return self.current

    def in_grace(self) -> bool:
        """Whether the licence in force has expired and serves only by the grace period."""
        current = self.current
        return current is not None and current.claims.exp <= time.time()

    @property
    def current(self) -> licences.VerifiedLicence | None:
        with self._lock:
            return self._current

    @property
    def problem(self) -> str:
        with self._lock:
            return self._problem
