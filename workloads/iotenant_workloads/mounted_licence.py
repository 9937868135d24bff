"""The licence a workload runs under: verified from the mounted files, re-read when they change.

Defence in depth: the operator verified the licence, and the workload verifies it again with the
published JWKS before trusting any limit or feature in it.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path

from iotenant import licence as licences

log = logging.getLogger("iotenant.licence")


class MountedLicence:
    # The files are looked at no more often than this: the API asks on every request.
    RECHECK_SECONDS = 1.0

    def __init__(self, licence_file: Path, jwks_file: Path, customer_id: str | None) -> None:
        self.licence_file = licence_file
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
        token = self.licence_file.read_text()
        jwks = json.loads(self.jwks_file.read_text())
        verified = licences.require_current(licences.verify(token, jwks, self.customer_id))
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
        expired = self._current is not None and self._current.claims.exp <= time.time()
        if changed or expired or self._current is None:
            try:
                verified = self.load()
                log.info("licence %s in force: plan %s", verified.claims.jti, verified.claims.plan)
            except (OSError, ValueError, licences.LicenceInvalid) as error:
                with self._lock:
                    self._current, self._problem = None, str(error)
                log.error("no valid licence: %s", error)
        return self.current

    @property
    def current(self) -> licences.VerifiedLicence | None:
        with self._lock:
            return self._current

    @property
    def problem(self) -> str:
        with self._lock:
            return self._problem
