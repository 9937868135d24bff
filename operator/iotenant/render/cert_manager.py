"""What iotenant asks of cert-manager: its Certificate kind, and issuer references as cert-manager reads them."""

from __future__ import annotations

from typing import Any

CERTIFICATE_API_VERSION = "cert-manager.io/v1"
CERTIFICATE_CRD = "certificates.cert-manager.io"
CERT_MANAGER_GROUP = "cert-manager.io"
# cert-manager's ingress-shim issues the certificate of an Ingress annotated with its issuer.
ISSUER_ANNOTATIONS = {"Issuer": "cert-manager.io/issuer", "ClusterIssuer": "cert-manager.io/cluster-issuer"}


def issuer_ref(issuer: dict[str, Any]) -> dict[str, str]:
    """``{name, kind, group}`` of an ``issuerRef`` from a spec, with the CRD's defaults filled in."""
    return {"name": str(issuer["name"]), "kind": str(issuer.get("kind") or "ClusterIssuer"),
            "group": str(issuer.get("group") or CERT_MANAGER_GROUP)}


def ingress_annotations(issuer: dict[str, Any]) -> dict[str, str]:
    """The annotations that make cert-manager's ingress-shim issue an Ingress's certificate with ``issuer``."""
    ref = issuer_ref(issuer)
    annotations = {ISSUER_ANNOTATIONS[ref["kind"]]: ref["name"]}
    if ref["group"] != CERT_MANAGER_GROUP:
        annotations.update({"cert-manager.io/issuer-kind": ref["kind"], "cert-manager.io/issuer-group": ref["group"]})
    return annotations
