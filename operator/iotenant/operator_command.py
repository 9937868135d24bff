"""``iotenant operator``: run the operator in the foreground against the current kubeconfig (or in-cluster)."""

from __future__ import annotations

import argparse
import os

from iotenant import logs
from iotenant import settings as operator_settings


def _run(args: argparse.Namespace) -> int:
    import kopf
    from prometheus_client import start_http_server

    from iotenant import handlers
    from iotenant.cluster_api import ClusterAPI

    logs.configure(args.log_level, args.log_format)
    settings = operator_settings.from_arguments(args)
    handlers.configure(settings, ClusterAPI.from_environment())
    if args.metrics_port:
        start_http_server(args.metrics_port, addr=args.metrics_address)
    kopf.run(
        clusterwide=True,
        standalone=True,
        liveness_endpoint=f"http://{args.metrics_address}:{args.health_port}/healthz" if args.health_port else None,
    )
    return 0


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser(
        "operator",
        help="run the operator in the foreground against the current kubeconfig",
        description="Reconcile CustomerInstances cluster-wide until interrupted. Every flag has an IOTENANT_... variable.",
    )
    operator_settings.add_arguments(parser)
    parser.add_argument("--metrics-port", type=int, default=int(os.environ.get("IOTENANT_METRICS_PORT", "9100")),
                        help="Prometheus /metrics port, 0 to disable [IOTENANT_METRICS_PORT] (default: 9100)")
    parser.add_argument("--health-port", type=int, default=int(os.environ.get("IOTENANT_HEALTH_PORT", "8081")),
                        help="liveness /healthz port, 0 to disable [IOTENANT_HEALTH_PORT] (default: 8081)")
    parser.add_argument("--metrics-address", default=os.environ.get("IOTENANT_METRICS_ADDRESS", "0.0.0.0"),
                        help="address the metrics and health servers bind [IOTENANT_METRICS_ADDRESS] (default: 0.0.0.0)")
    parser.add_argument("--log-level", default=os.environ.get("IOTENANT_LOG_LEVEL", "info"),
                        choices=["debug", "info", "warning", "error"], help="[IOTENANT_LOG_LEVEL] (default: info)")
    parser.add_argument("--log-format", default=os.environ.get("IOTENANT_LOG_FORMAT", "json"), choices=["json", "text"],
                        help="[IOTENANT_LOG_FORMAT] (default: json)")
    parser.set_defaults(run=_run)
