"""Where the Kubernetes API server really listens: the addresses and ports of EndpointSlice default/kubernetes.

A NetworkPolicy judges traffic after the Service address was translated, so a dedicated Prometheus' egress to
the API server names these endpoints, not the Service's 443. Unless the operator's settings name the
addresses (``--apiserver-cidrs``), they are read at start and every ``REFRESH_SECONDS``: a managed control
plane's addresses change when it is upgraded.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import replace

from kubernetes.client.exceptions import ApiException

from iotenant.kube.client import ClusterAPI, Manifest
from iotenant.settings import OperatorSettings
from iotenant.vocabulary.kinds import ENDPOINT_SLICE

log = logging.getLogger("iotenant.operator")

REFRESH_SECONDS = 300.0
SERVICE_NAMESPACE, SERVICE_NAME = "default", "kubernetes"


def read(api: ClusterAPI) -> tuple[tuple[str, ...], tuple[int, ...]] | None:
    """(addresses as /32 or /128 CIDRs, ports) of the API server's ready endpoints; None when unreadable or empty."""
    try:
        found = api.get(ENDPOINT_SLICE, SERVICE_NAME, SERVICE_NAMESPACE)
    except ApiException as error:
        log.warning("could not read EndpointSlice %s/%s (%s): a dedicated Prometheus may reach any address on the API "
                    "server's ports; set --apiserver-cidrs to name them", SERVICE_NAMESPACE, SERVICE_NAME, error.status)
        return None
    return endpoints_of(found or {})


def endpoints_of(endpoint_slice: Manifest) -> tuple[tuple[str, ...], tuple[int, ...]] | None:
    """(CIDRs, ports) of an EndpointSlice's ready endpoints; what is not an address or a port is left out."""
    cidrs, ports = set(), set()
    for endpoint in endpoint_slice.get("endpoints") or []:
        if (endpoint.get("conditions") or {}).get("ready") is False:
            continue
        for address in endpoint.get("addresses") or []:
            try:
                cidrs.add(str(ipaddress.ip_network(address)))
            except ValueError:
                continue
    for port in endpoint_slice.get("ports") or []:
        if isinstance(port.get("port"), int) and 1 <= port["port"] <= 65535:
            ports.add(port["port"])
    if not cidrs or not ports:
        return None
    return tuple(sorted(cidrs)), tuple(sorted(ports))


def settings_with_endpoints(api: ClusterAPI, settings: OperatorSettings) -> OperatorSettings:
    """The operator's ``settings`` as configured, with the API server's addresses and ports as read now unless
    they name addresses themselves (or none can be read: then as they are)."""
    if settings.apiserver_cidrs:
        return settings
    found = read(api)
    if found is None:
        return settings
    cidrs, ports = found
    return replace(settings, apiserver_cidrs=cidrs, apiserver_ports=ports)
