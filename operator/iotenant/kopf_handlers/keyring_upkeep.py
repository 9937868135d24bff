"""The licence signing key ring, kept current: re-read, retired when no licence uses a key, published as JWKS."""

from __future__ import annotations

import asyncio
import logging

from iotenant.kopf_handlers.metrics import SIGNING_KEYS
from iotenant.kopf_handlers.state import OperatorState
from iotenant.kube.apply import apply_if_changed
from iotenant.licensing import signing_keys
from iotenant.vocabulary.kinds import CONFIG_MAP

log = logging.getLogger("iotenant.operator")


def publish_jwks(s: OperatorState) -> None:
    assert s.keyring is not None
    manifest = signing_keys.jwks_config_map(s.settings.namespace, s.keyring.public_jwks)
    apply_if_changed(s.api, manifest, s.api.get(CONFIG_MAP, signing_keys.JWKS_CONFIG_MAP, s.settings.namespace))
    SIGNING_KEYS.set(len(s.keyring.keys))


def refresh_keyring(s: OperatorState) -> bool:
    """Re-read the key ring; retire keys no licence uses. True when the ring changed."""
    assert s.keyring is not None
    found = signing_keys.read(s.api, s.settings.namespace, known=(s.keyring, s.keyring_version))
    if found is None:
        return False
    ring, version = found
    changed = version != s.keyring_version
    s.keyring, s.keyring_version = ring, version
    in_use = {kid for kid in s.kids.values() if kid}
    reported_all = all(uid in s.kids for uid in s.wakeups)
    if reported_all and set(ring.keys) - in_use - {ring.active_kid}:
        retired = ring.retired(in_use)
        try:
            new_version = signing_keys.replace(s.api, s.settings.namespace, retired, version)
        except Exception as error:  # a concurrent rotation wins; we retire on the next pass
            log.info("key retirement deferred: %s", error)
            return changed
        log.info("retired signing keys %s", sorted(set(ring.keys) - set(retired.keys)))
        s.keyring, s.keyring_version = retired, new_version
        changed = True
    if changed:
        publish_jwks(s)
    return changed


async def maintain_keyring(s: OperatorState) -> None:
    interval = max(1.0, min(10.0, s.settings.resync_seconds / 4))
    while True:
        await asyncio.sleep(interval)
        try:
            if await asyncio.to_thread(refresh_keyring, s):
                s.wake()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("key ring maintenance failed; retrying")
