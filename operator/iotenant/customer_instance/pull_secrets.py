"""The operator's image pull Secrets, read from its own namespace for the tenants' copies (``render.image_pull``).

Read at start and every ``REFRESH_SECONDS``, so a rotated registry credential reaches every tenant within a
minute. A named Secret that is absent, unreadable or not of a pull type is left out with a warning: the
tenant pods still name it, and the kubelet pulls without it (a public or node-cached image still starts).
"""

from __future__ import annotations

import logging

from kubernetes.client.exceptions import ApiException

from iotenant.kube.client import ClusterAPI
from iotenant.render.image_pull import PULL_SECRET_KEYS, PullSecret
from iotenant.vocabulary.kinds import SECRET

log = logging.getLogger("iotenant.operator")

REFRESH_SECONDS = 60.0


def read_pull_secrets(api: ClusterAPI, namespace: str, names: tuple[str, ...]) -> tuple[PullSecret, ...]:
    """The pull Secrets ``names`` of ``namespace`` that exist and hold credentials of a pull type."""
    found = []
    for name in names:
        try:
            secret = api.get(SECRET, name, namespace)
        except ApiException as error:
            log.warning("could not read image pull Secret %s/%s (%s): tenant pods pull without it", namespace, name, error.status)
            continue
        pull_secret = PullSecret.from_secret(secret) if secret is not None else None
        if pull_secret is None:
            log.warning("image pull Secret %s/%s is %s: tenant pods pull without it", namespace, name,
                        "absent" if secret is None else f"not of a pull type ({', '.join(sorted(PULL_SECRET_KEYS))}) with its key")
            continue
        found.append(pull_secret)
    return tuple(found)
