"""Issuer references as cert-manager reads them, and the Ingress annotations its ingress-shim acts on."""

from __future__ import annotations

from iotenant.render.cert_manager import ingress_annotations, issuer_ref


def test_an_issuer_reference_gets_the_crds_defaults() -> None:
    assert issuer_ref({"name": "public-ca"}) == {"name": "public-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}
    assert issuer_ref({"name": "ns-ca", "kind": "Issuer"})["kind"] == "Issuer"


def test_an_ingress_names_its_issuer_and_an_external_issuer_by_kind_and_group() -> None:
    assert ingress_annotations({"name": "public-ca"}) == {"cert-manager.io/cluster-issuer": "public-ca"}
    assert ingress_annotations({"name": "ns-ca", "kind": "Issuer"}) == {"cert-manager.io/issuer": "ns-ca"}
    external = ingress_annotations({"name": "vault", "kind": "Issuer", "group": "vault.example.com"})
    assert external == {"cert-manager.io/issuer": "vault", "cert-manager.io/issuer-kind": "Issuer",
                        "cert-manager.io/issuer-group": "vault.example.com"}
