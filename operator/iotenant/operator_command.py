"""``iotenant operator``: run the operator in the foreground against the current kubeconfig (or in-cluster)."""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import signal
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

from iotenant import logs
from iotenant import settings as operator_settings
from iotenant.environment_flags import boolean, flag

if TYPE_CHECKING:
    from iotenant.kube.client import ClusterAPI
    from iotenant.kube.leader_election import LeaderElection

log = logging.getLogger("iotenant.operator")
M_ARENA_MAX = -8  # glibc's mallopt parameter (malloc.h)


class _StandbyHealth(BaseHTTPRequestHandler):
    """/healthz of a standby replica: alive and waiting (Kopf serves it once this replica leads)."""

    def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
        status = 200 if self.path.split("?")[0] == "/healthz" else 404
        body = b'{"status":"standby"}' if status == 200 else b'{"error":"not_found"}'
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return


def _lead(args: argparse.Namespace, api: "ClusterAPI") -> "LeaderElection | None":
    """With --leader-election: wait (serving a standby /healthz) until this replica holds the Lease."""
    if not args.leader_election:
        return None
    from iotenant.kube.leader_election import LeaderElection

    election = LeaderElection(api, args.namespace, args.identity, lease_seconds=args.lease_seconds,
                              renew_seconds=max(1.0, args.lease_seconds / 3))
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    standby = ThreadingHTTPServer((args.metrics_address, args.health_port), _StandbyHealth) if args.health_port else None
    if standby:
        threading.Thread(target=standby.serve_forever, daemon=True).start()
    try:
        if not election.acquire(stopping):
            return None
    finally:
        if standby:
            standby.shutdown()
            standby.server_close()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)

    def lost() -> None:
        log.critical("lost the leader Lease: stopping at once so that only one replica reconciles")
        os._exit(1)

    election.keep(lost, threading.Event())
    return election


def _few_malloc_arenas() -> None:
    """glibc gives threads that allocate at once malloc arenas of their own (up to eight per core), and
    memory freed in one stays there: with the reconcile threads that was 9 MiB at 200 tenants that
    nothing used. Two arenas, unless MALLOC_ARENA_MAX says otherwise; nothing on a libc without them."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return
    try:
        ctypes.CDLL(None).mallopt(M_ARENA_MAX, 2)
    except (OSError, AttributeError):
        pass


def _run(args: argparse.Namespace) -> int:
    _few_malloc_arenas()
    import kopf
    from prometheus_client import start_http_server

    from iotenant import kopf_handlers
    from iotenant.kopf_handlers.state import RECONCILE_THREADS
    from iotenant.kube.client import ClusterAPI

    logs.configure(args.log_level, args.log_format)
    settings = operator_settings.from_arguments(args)
    # A connection for every reconcile thread, the leader election and the key ring upkeep.
    api = ClusterAPI.from_environment(connections=RECONCILE_THREADS + 4)
    if args.metrics_port:
        start_http_server(args.metrics_port, addr=args.metrics_address)
    election = _lead(args, api)
    if args.leader_election and election is None:
        return 0  # stopped while standing by
    kopf_handlers.configure(settings, api)
    try:
        kopf.run(
            clusterwide=True,
            standalone=True,
            liveness_endpoint=f"http://{args.metrics_address}:{args.health_port}/healthz" if args.health_port else None,
        )
    finally:
        if election is not None:
            election.release()
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
    logs.add_flags(parser)
    flag(parser, "--leader-election", "IOTENANT_LEADER_ELECTION",
         "run as one of several replicas: reconcile only while holding the Lease iotenant-operator in --namespace",
         kind=boolean, default=False)
    flag(parser, "--identity", "IOTENANT_POD_NAME", "this replica's name in the Lease",
         default=f"{socket.gethostname()}-{os.getpid()}")
    flag(parser, "--lease-seconds", "IOTENANT_LEASE_SECONDS", "how long a Lease lasts without renewal", kind=int, default=15)
    parser.set_defaults(run=_run)
