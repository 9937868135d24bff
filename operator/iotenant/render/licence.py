"""What the workloads verify their licence with: Secret ``licence`` and ConfigMap ``licence-keys``."""

from __future__ import annotations

import json

from iotenant.render.builders import Manifest, config_map, secret
from iotenant.render.inputs import StackInput
from iotenant.vocabulary.contract import JWKS_CONFIG_MAP, JWKS_KEY, LICENCE_KEY, LICENCE_SECRET


def licence_objects(stack: StackInput) -> list[Manifest]:
    """Secret ``licence`` (key licence.jwt) and ConfigMap ``licence-keys`` (key jwks.json)."""
    objects = [config_map(stack.owner, JWKS_CONFIG_MAP, None, {JWKS_KEY: json.dumps(stack.jwks, sort_keys=True)})]
    if stack.licence_token:
        objects.append(secret(stack.owner, LICENCE_SECRET, None, {LICENCE_KEY: stack.licence_token}))
    return objects
