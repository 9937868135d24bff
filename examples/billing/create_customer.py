"""A billing system's side of iotenant: store a customer's licence, create its CustomerInstance, wait, report.

Runs with a ServiceAccount bound to the chart's ``iotenant-billing`` roles (CustomerInstances cluster-wide,
licence Secrets in the billing namespace only) and nothing else:

    python examples/billing/create_customer.py --name umbrella --customer-id umbrella-corp \\
        --licence umbrella.jwt --kubeconfig billing-bot.kubeconfig

The licence is a JWT the billing system signed (``iotenant licence issue --issuer <its name> ...``);
its ``sub`` must be the customer id. Applying the same arguments again changes nothing; a new licence
file replaces the old one and the operator re-verifies it.
"""

from __future__ import annotations

import argparse
import base64
import sys
import time
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

GROUP, VERSION, PLURAL = "iotenant.io", "v1alpha1", "customerinstances"
FIELD_MANAGER = "billing-example"


APPLY = {"field_manager": FIELD_MANAGER, "force": True, "_content_type": "application/apply-patch+yaml"}  # server-side apply


def apply_licence_secret(core: client.CoreV1Api, namespace: str, name: str, token: str) -> None:
    body = {
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": namespace},
        "type": "Opaque", "data": {"licence.jwt": base64.b64encode(token.encode()).decode()},
    }
    core.patch_namespaced_secret(name, namespace, body, **APPLY)


def apply_instance(custom: client.CustomObjectsApi, name: str, customer_id: str, secret: str, namespace: str) -> None:
    body = {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "CustomerInstance", "metadata": {"name": name},
        "spec": {"customerId": customer_id, "licence": {"secretRef": {"name": secret, "namespace": namespace}}},
    }
    custom.patch_cluster_custom_object(GROUP, VERSION, PLURAL, name, body, **APPLY)


def ready_condition(instance: dict[str, Any]) -> dict[str, Any]:
    return next((c for c in instance.get("status", {}).get("conditions", []) if c.get("type") == "Ready"), {})


def wait_ready(custom: client.CustomObjectsApi, name: str, timeout: float) -> dict[str, Any]:
    """The instance once Ready=True for its current generation; exits with the reason when it is stalled."""
    deadline = time.monotonic() + timeout
    while True:
        instance = custom.get_cluster_custom_object(GROUP, VERSION, PLURAL, name)
        status = instance.get("status", {})
        current = status.get("observedGeneration") == instance["metadata"]["generation"]
        ready = ready_condition(instance)
        if current and ready.get("status") == "True":
            return instance
        stalled = next((c for c in status.get("conditions", []) if c.get("type") == "Stalled"), {})
        if current and stalled.get("status") == "True":
            sys.exit(f"{name}: {ready.get('reason')}: {ready.get('message')}")
        if time.monotonic() > deadline:
            sys.exit(f"{name}: not Ready after {timeout:.0f} s (phase {status.get('phase')}, {ready.get('reason')})")
        time.sleep(1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True, help="the CustomerInstance (its namespace is customer-<name>)")
    parser.add_argument("--customer-id", required=True, help="the billing system's id of the customer (the licence's sub)")
    parser.add_argument("--licence", required=True, help="file holding the billing-issued licence JWT")
    parser.add_argument("--billing-namespace", default="billing", help="where licence Secrets live (default: billing)")
    parser.add_argument("--kubeconfig", help="default: $KUBECONFIG, then the in-cluster ServiceAccount")
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args()
    try:
        config.load_kube_config(config_file=args.kubeconfig)
    except config.ConfigException:
        config.load_incluster_config()
    core, custom = client.CoreV1Api(), client.CustomObjectsApi()
    secret = f"{args.name}-licence"
    try:
        with open(args.licence) as handle:
            apply_licence_secret(core, args.billing_namespace, secret, handle.read().strip())
        apply_instance(custom, args.name, args.customer_id, secret, args.billing_namespace)
    except ApiException as error:
        sys.exit(f"the cluster refused: {error.status} {error.reason}: {error.body}")
    instance = wait_ready(custom, args.name, args.timeout)
    status = instance["status"]
    print(f"{args.name}: Ready, plan {status['licence']['plan']}, licence expires {status['licence']['expiresAt']}")
    print(f"mqtt: {status['endpoints']['mqtt']}")
    print(f"api:  {status['endpoints']['api']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
