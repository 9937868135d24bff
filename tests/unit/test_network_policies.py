"""Tenant NetworkPolicies without a cluster: where DNS is, as the operator's settings say."""

from __future__ import annotations

import dataclasses

import pytest

from iotenant.kube.apiserver_endpoints import endpoints_of
from iotenant.render.guardrails import network_policies
from iotenant.settings import OperatorSettings, label_list, port_list
from stacks import fixture_stack


def dns_rule(settings: OperatorSettings) -> dict:
    stack = dataclasses.replace(fixture_stack("starter"), settings=settings)
    (policy,) = [p for p in network_policies(stack) if p["metadata"]["name"] == "allow-egress-dns-and-namespace"]
    return policy["spec"]["egress"][0]


def test_the_default_is_the_kube_dns_pods_of_kube_system_on_port_53() -> None:
    assert dns_rule(OperatorSettings()) == {
        "to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
        "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
    }
    anywhere_there = dns_rule(OperatorSettings(dns_pod_selector=()))
    assert anywhere_there["to"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}}]


def test_a_dedicated_prometheus_reaches_only_the_api_servers_addresses_when_they_are_named() -> None:
    def apiserver_rule(settings: OperatorSettings) -> dict:
        stack = dataclasses.replace(fixture_stack("enterprise"), settings=settings)
        (policy,) = [p for p in network_policies(stack) if p["metadata"]["name"] == "allow-prometheus-to-apiserver"]
        return policy["spec"]["egress"][0]

    assert "to" not in apiserver_rule(OperatorSettings())
    named = apiserver_rule(OperatorSettings(apiserver_cidrs=("10.0.0.1/32", "10.0.0.2/32")))
    assert named["to"] == [{"ipBlock": {"cidr": "10.0.0.1/32"}}, {"ipBlock": {"cidr": "10.0.0.2/32"}}]
    assert {port["port"] for port in named["ports"]} == {443, 6443}


def test_the_api_servers_endpoints_are_read_from_its_endpoint_slice_and_hostile_entries_left_out() -> None:
    endpoint_slice = {
        "endpoints": [
            {"addresses": ["10.244.0.1"], "conditions": {"ready": True}},
            {"addresses": ["fd00::1", "not-an-address", "10.0.0.0/8x"]},
            {"addresses": ["192.0.2.9"], "conditions": {"ready": False}},  # a control plane node being replaced
            {"addresses": None},
        ],
        "ports": [{"name": "https", "port": 32765}, {"port": "443"}, {"port": 70000}, {}],
    }
    assert endpoints_of(endpoint_slice) == (("10.244.0.1/32", "fd00::1/128"), (32765,))
    assert endpoints_of({"endpoints": [{"addresses": ["10.0.0.1"]}], "ports": []}) is None, "no port: nothing to name"
    assert endpoints_of({}) is None
    read = OperatorSettings(apiserver_cidrs=("10.244.0.1/32",), apiserver_ports=(32765,))
    stack = dataclasses.replace(fixture_stack("enterprise"), settings=read)
    (policy,) = [p for p in network_policies(stack) if p["metadata"]["name"] == "allow-prometheus-to-apiserver"]
    assert policy["spec"]["egress"] == [{"ports": [{"protocol": "TCP", "port": 32765}], "to": [{"ipBlock": {"cidr": "10.244.0.1/32"}}]}]


def test_openshift_and_node_local_dns() -> None:
    openshift = OperatorSettings(dns_namespace="openshift-dns", dns_pod_selector=("dns.operator.openshift.io/daemonset-dns=default",),
                                 dns_ports=(5353,))
    assert dns_rule(openshift) == {
        "to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "openshift-dns"}},
                "podSelector": {"matchLabels": {"dns.operator.openshift.io/daemonset-dns": "default"}}}],
        "ports": [{"protocol": "UDP", "port": 5353}, {"protocol": "TCP", "port": 5353}],
    }
    node_local = dns_rule(OperatorSettings(dns_cidrs=("169.254.20.10/32",), dns_ports=(53, 5353)))
    assert node_local["to"][1] == {"ipBlock": {"cidr": "169.254.20.10/32"}} and len(node_local["ports"]) == 4


@pytest.mark.parametrize(("parse", "text"), [(port_list, "0"), (port_list, "53,70000"), (port_list, "dns"), (port_list, ""),
                                             (label_list, "k8s-app"), (label_list, "=x")])
def test_bad_dns_settings_are_refused(parse, text: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError):
        parse(text)
    assert port_list("53, 5353") == (53, 5353) and label_list("a=b,c=d") == ("a=b", "c=d")
