"""Image pull Secrets: what is taken from the operator's namespace, and the copies and pod field made of it."""

from __future__ import annotations

from typing import Any

import pytest

from iotenant.render.image_pull import PullSecret, image_pull_secrets, pull_secret_copies
from iotenant.vocabulary import meta

OWNER = meta.Owner("acme", "00000000-0000-0000-0000-000000000001")


def secret(secret_type: Any, data: Any) -> dict:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "regcred", "namespace": "iotenant-system"},
            "type": secret_type, "data": data}


def test_a_pull_secret_is_copied_with_its_type_and_credentials_and_named_by_pods() -> None:
    source = PullSecret.from_secret(secret("kubernetes.io/dockerconfigjson", {".dockerconfigjson": "e30=", "other": "eA=="}))
    assert source == PullSecret("regcred", "kubernetes.io/dockerconfigjson", "e30=")
    (copy,) = pull_secret_copies(OWNER, (source,))
    assert copy["metadata"]["namespace"] == "customer-acme" and copy["metadata"]["name"] == "image-pull-regcred"
    assert copy["type"] == "kubernetes.io/dockerconfigjson" and copy["data"] == {".dockerconfigjson": "e30="}, "nothing else is copied"
    assert copy["metadata"]["ownerReferences"][0]["uid"] == OWNER.uid
    assert image_pull_secrets(("regcred", "other")) == {"imagePullSecrets": [{"name": "image-pull-regcred"}, {"name": "image-pull-other"}]}
    assert image_pull_secrets(()) == {}, "no empty field on pods when none is configured"


@pytest.mark.parametrize("secret_type, data", [
    ("Opaque", {".dockerconfigjson": "e30="}),  # not a pull type: never copied (it may hold anything)
    ("kubernetes.io/dockerconfigjson", {".dockercfg": "e30="}),  # the other type's key
    ("kubernetes.io/dockerconfigjson", {".dockerconfigjson": ""}),
    ("kubernetes.io/dockerconfigjson", {".dockerconfigjson": "not base64!"}),
    ("kubernetes.io/dockerconfigjson", {".dockerconfigjson": {"nested": True}}),
    ("kubernetes.io/dockerconfigjson", None),
    (["kubernetes.io/dockerconfigjson"], {".dockerconfigjson": "e30="}),
    (None, None),
])
def test_a_secret_that_is_not_a_pull_secret_is_left_out(secret_type: Any, data: Any) -> None:
    assert PullSecret.from_secret(secret(secret_type, data)) is None


def test_one_unusable_secret_leaves_the_next_one_usable() -> None:
    """Each named Secret is judged alone: hostile ones are left out, a good one after them is still copied."""
    read = [secret("Opaque", {".dockerconfigjson": "e30="}), secret({"nested": "type"}, {"a": "b"}),
            secret("kubernetes.io/dockerconfigjson", {".dockerconfigjson": "\u0000" * 10**6}),
            secret("kubernetes.io/dockercfg", {".dockercfg": "e30="})]
    usable = [judged for judged in map(PullSecret.from_secret, read) if judged is not None]
    assert [s.type for s in usable] == ["kubernetes.io/dockercfg"], "credentials that are not base64 are never copied"
    (copy,) = pull_secret_copies(OWNER, tuple(usable))
    assert copy["data"] == {".dockercfg": "e30="}
