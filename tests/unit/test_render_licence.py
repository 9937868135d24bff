"""What the workloads verify their licence with: the JWKS always, the licence Secret only when there is one."""

from __future__ import annotations

import dataclasses
import json

from iotenant.render import licence
from iotenant.vocabulary.contract import JWKS_CONFIG_MAP, JWKS_KEY, LICENCE_SECRET
from stacks import fixture_stack


def test_the_keys_are_published_and_the_licence_only_when_one_was_verified() -> None:
    objects = {o["metadata"]["name"]: o for o in licence.licence_objects(fixture_stack("starter"))}
    assert json.loads(objects[JWKS_CONFIG_MAP]["data"][JWKS_KEY]) == fixture_stack("starter").jwks
    assert LICENCE_SECRET in objects
    without = licence.licence_objects(dataclasses.replace(fixture_stack("starter"), licence_token=""))
    assert [o["metadata"]["name"] for o in without] == [JWKS_CONFIG_MAP], "no licence: no Secret, the workloads stop"
