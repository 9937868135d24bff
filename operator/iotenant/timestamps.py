"""Times as Kubernetes and licences write them: RFC 3339 in UTC, whole seconds (``2026-11-25T10:00:00Z``)."""

from __future__ import annotations

import time


def rfc3339(seconds: float | None = None) -> str:
    """``seconds`` since the epoch (now when None) as RFC 3339 UTC text."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if seconds is None else seconds))
