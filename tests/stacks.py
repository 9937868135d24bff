"""A fixed customer stack input per plan: fixed secrets, licence and keys, so what it renders is stable."""

from __future__ import annotations

import dataclasses

from iotenant.licensing.plans import load_catalogue
from iotenant.mosquitto.admin_tls import AdminTLS
from iotenant.mosquitto.device_endpoint import DeviceEndpoint
from iotenant.render.inputs import GeneratedSecrets, StackInput
from iotenant.render.parts import enabled_parts
from iotenant.render.stack_part import StackPart
from iotenant.settings import OperatorSettings
from iotenant.vocabulary.meta import Owner


def fixture_stack(plan_name: str) -> StackInput:
    """A fixed instance of ``plan_name``: fixed secrets, licence and keys, so the output is stable."""
    plan = load_catalogue()[plan_name]
    claims = dataclasses.replace(plan.claims("acme-0001", "iotenant-operator", 365 * 86400, now=1_790_000_000), jti="jti-" + plan_name)
    tls = AdminTLS("CA-CERT", "SERVER-CERT", "SERVER-KEY", "CLIENT-CERT", "CLIENT-KEY")
    secrets = GeneratedSecrets("db-pw", "db-ingest-pw", "db-api-pw", "api-token", tls, "broker-ingest-pw", "broker-api-pw", "share-group-x")
    spec: dict = {"customerId": "acme-0001", "plan": plan_name}
    exposure: dict = {}
    if plan_name == "professional":  # a load balancer the cloud has not addressed yet, and the customer's own certificate
        spec |= {"broker": {"service": {"type": "LoadBalancer", "annotations": {"cloud.example/internal": "true"},
                                        "loadBalancerSourceRanges": ["203.0.113.0/24"]},
                            "tls": {"secretName": "acme-broker-cert"}}}
        exposure = {"device_endpoint": DeviceEndpoint("mqtt", "broker.customer-acme.svc", 1883, assigned=False), "broker_tls_hash": "cert-1"}
    if plan_name == "enterprise":  # TLS only from cert-manager, a node port behind a DNS name, and an API Ingress
        spec |= {"ingest": {"replicas": 2},
                 "broker": {"service": {"type": "NodePort"}, "externalHost": "mqtt.acme.example",
                            "tls": {"issuerRef": {"name": "public-ca", "kind": "ClusterIssuer"}, "only": True}},
                 "api": {"ingress": {"className": "nginx", "host": "api.acme.example", "tls": {"issuerRef": {"name": "public-ca"}}}}}
        exposure = {"device_endpoint": DeviceEndpoint("mqtts", "mqtt.acme.example", 30883), "broker_tls_hash": "cert-2",
                    "certificate_crd_present": True}
    return StackInput(owner=Owner("acme", "uid-acme"), spec=spec, settings=OperatorSettings(), secrets=secrets, claims=claims,
                      licence_token="licence-token-" + plan_name, jwks={"keys": [{"kid": "k1", "kty": "RSA", "n": "n", "e": "AQAB"}]},
                      quota=plan.quota, serving=True, service_monitor_crd_present=True, prometheus_rule_crd_present=True,
                      broker_limits=plan.broker, **exposure)


def running_parts(plan_name: str) -> list[StackPart]:
    """The parts with pods that a tenant of ``plan_name`` runs, as the registry declares them."""
    return [part for part in enabled_parts(fixture_stack(plan_name)) if part.workload is not None and part.render is not None]
