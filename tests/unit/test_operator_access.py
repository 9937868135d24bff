"""The operator's read access to a customer namespace: bound there, to its own account, and only when configured."""

from __future__ import annotations

import dataclasses

from iotenant.render.operator_access import SECRET_READER_BINDING
from iotenant.render.stack import render_customer_stack
from iotenant.settings import OperatorSettings
from stacks import fixture_stack


def test_each_customer_namespace_binds_the_secret_reader_to_the_operator_right_after_the_namespace() -> None:
    settings = OperatorSettings(namespace="platform", service_account="iotenant-operator", secret_reader_role="iotenant-operator-secrets")
    stack = dataclasses.replace(fixture_stack("starter"), settings=settings)
    objects = render_customer_stack(stack)
    assert [o["kind"] for o in objects[:2]] == ["Namespace", "RoleBinding"], "bound before any Secret is written"
    binding = objects[1]
    assert binding["metadata"]["name"] == SECRET_READER_BINDING and binding["metadata"]["namespace"] == stack.owner.namespace
    assert binding["metadata"]["ownerReferences"][0]["uid"] == stack.owner.uid
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "iotenant-operator-secrets"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "iotenant-operator", "namespace": "platform"}]


def test_nothing_is_bound_without_an_account_and_a_role() -> None:
    for settings in (OperatorSettings(), OperatorSettings(service_account="iotenant-operator"), OperatorSettings(secret_reader_role="r")):
        objects = render_customer_stack(dataclasses.replace(fixture_stack("starter"), settings=settings))
        assert not [o for o in objects if o["metadata"]["name"] == SECRET_READER_BINDING]
