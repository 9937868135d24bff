"""The watch cache's compressed copies: exact round trips, and a tenant's objects held in well under half
the bytes with the operator's dictionary (a rendered tenant) than without."""

from __future__ import annotations

import secrets

from iotenant.customer_instance.live_objects import cache_dictionary
from iotenant.kube.apply import with_hash
from iotenant.kube.object_store import DICTIONARY_BYTES, CompressedJSON
from iotenant.licensing.plans import load_catalogue
from iotenant.render.stack import render_customer_stack
from iotenant.settings import OperatorSettings
from iotenant.vocabulary.kinds import kind_of_manifest
from stacks import fixture_stack


def held_objects(plan_name: str) -> list[dict]:
    """A tenant's objects as the server returns them: metadata of its own, a status, managedFields."""
    objects = []
    for manifest in render_customer_stack(fixture_stack(plan_name)):
        served = with_hash(manifest)
        served["metadata"] |= {"uid": "6f1c2d3e-4a5b-6c7d-8e9f-0a1b2c3d4e5f", "resourceVersion": "123456",
                               "creationTimestamp": "2026-12-05T01:02:03Z", "managedFields": [{"manager": "iotenant-operator"}]}
        served["status"] = {"observedGeneration": 1}
        objects.append(served)
    return objects


def test_every_object_comes_back_as_it_was_without_managed_fields_and_unread_status() -> None:
    codec = CompressedJSON(cache_dictionary(OperatorSettings(), load_catalogue()))
    for item in held_objects("enterprise"):
        kind = kind_of_manifest(item)
        back = codec.expand(codec.compact(item, kind, keep_status=True))
        assert "managedFields" not in back["metadata"]
        del item["metadata"]["managedFields"]
        assert back == item
        assert "status" not in codec.expand(codec.compact(item, kind, keep_status=False))


def test_the_dictionary_of_a_rendered_tenant_more_than_halves_what_a_tenant_takes() -> None:
    dictionary = cache_dictionary(OperatorSettings(), load_catalogue())
    assert len(dictionary) >= DICTIONARY_BYTES, "a whole window of what tenants look like"
    plain, shared = CompressedJSON(b""), CompressedJSON(dictionary)
    for plan_name in ("starter", "professional", "enterprise"):
        objects = [(item, kind_of_manifest(item)) for item in held_objects(plan_name)]
        without = sum(len(plain.compact(item, kind, True)) for item, kind in objects)
        with_dictionary = sum(len(shared.compact(item, kind, True)) for item, kind in objects)
        assert with_dictionary < without / 2, (plan_name, with_dictionary, without)


def test_objects_unlike_any_tenant_still_come_back_whole() -> None:
    codec = CompressedJSON(cache_dictionary(OperatorSettings(), load_catalogue()))
    odd = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x" * 253, "namespace": "ns"},
           "data": {"random": secrets.token_urlsafe(70000), "text": "\u00e9\u4e2d\U0001f600\x00", "nested": "[" * 5000}}
    item = odd | {"data": odd["data"] | {"deep": None}}
    deep: dict = {}
    cursor = deep
    for _ in range(60):
        cursor["next"] = {}
        cursor = cursor["next"]
    item["data"]["deep"] = deep  # type: ignore[assignment]
    kind = kind_of_manifest(item)
    assert codec.expand(codec.compact(item, kind, keep_status=False)) == item
    good = held_objects("starter")[0]
    del good["metadata"]["managedFields"]
    assert codec.expand(codec.compact(good, kind_of_manifest(good), keep_status=True)) == good, "the next object is held as before"
