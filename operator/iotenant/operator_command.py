"""``iotenant operator``: run the operator in the foreground against the current kubeconfig (or in-cluster)."""

from __future__ import annotations

import argparse

from iotenant import logs
from iotenant import settings as operator_settings
from iotenant.environment_flags import flag


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
    flag(parser, "--metrics-port", "IOTENANT_METRICS_PORT", "Prometheus /metrics port, 0 to disable", kind=int, default=9100)
    flag(parser, "--health-port", "IOTENANT_HEALTH_PORT", "liveness /healthz port, 0 to disable", kind=int, default=8081)
    flag(parser, "--metrics-address", "IOTENANT_METRICS_ADDRESS", "address the metrics and health servers bind", default="0.0.0.0")
    flag(parser, "--log-level", "IOTENANT_LOG_LEVEL", "log level", default="info", choices=["debug", "info", "warning", "error"])
    flag(parser, "--log-format", "IOTENANT_LOG_FORMAT", "log format", default="json", choices=["json", "text"])
    parser.set_defaults(run=_run)
