"""The operator's own access to a customer namespace: a RoleBinding that lets it read the namespace's Secrets.

The chart grants the operator no Secret reads across the cluster. Each namespace it manages binds the
chart's secret-reader ClusterRole to the operator's ServiceAccount (the ClusterRole lets the operator bind
that role and no other), so a stolen operator token reads Secrets only in customer namespaces, in its own
namespace and in the billing namespaces. Without a ServiceAccount and role in the settings (an operator run
with a person's credentials), nothing is bound.
"""

from __future__ import annotations

from typing import Any

from iotenant.settings import OperatorSettings
from iotenant.vocabulary.meta import Owner

Manifest = dict[str, Any]

SECRET_READER_BINDING = "iotenant-operator-secrets"


def secret_reader_binding(owner: Owner, settings: OperatorSettings) -> list[Manifest]:
    """The RoleBinding of the operator's ServiceAccount to the secret-reader role (none when either is unset)."""
    if not settings.service_account or not settings.secret_reader_role:
        return []
    return [{
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": owner.metadata(SECRET_READER_BINDING),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": settings.secret_reader_role},
        "subjects": [{"kind": "ServiceAccount", "name": settings.service_account, "namespace": settings.namespace}],
    }]
