"""``iotenant ingest``: the command line, its flags (each with its environment variable) and start-up."""

from __future__ import annotations

import argparse
import logging
import signal
import socket
from pathlib import Path

from iotenant import logs
from iotenant.environment_flags import flag
from iotenant.vocabulary.contract import Env
from iotenant_workloads import service_endpoints
from iotenant_workloads.ingest import service
from iotenant_workloads.ingest.service import Ingest
from iotenant_workloads.ingest.settings import IngestSettings
from iotenant_workloads.service_flags import add_common_flags, mounted_licence, mqtt_password

log = logging.getLogger("iotenant.ingest")


def _settings(args: argparse.Namespace) -> IngestSettings:
    return IngestSettings(
        database_url=args.database_url,
        mqtt_host=args.mqtt_host,
        mqtt_port=args.mqtt_port,
        mqtt_username=args.mqtt_username,
        mqtt_password=mqtt_password(args),
        client_id=args.client_id,
        share_group=args.share_group,
        inflight=args.inflight,
        batch_size=args.batch_size,
        batch_seconds=args.batch_seconds,
        licence_file=Path(args.licence_file),
        jwks_file=Path(args.jwks_file),
        customer_id=args.customer_id,
        licence_grace_seconds=args.licence_grace_seconds,
        replicas=args.replicas,
        metrics_address=args.metrics_address,
        metrics_port=args.metrics_port,
    )


def _run(args: argparse.Namespace) -> int:
    logs.configure(args.log_level, args.log_format)
    settings = _settings(args)
    service = Ingest(settings, mounted_licence(args))  # without a valid licence ingest starts paused
    service_endpoints.serve(settings.metrics_address, settings.metrics_port, service.ready)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: service.stopping.set())
    service.run()
    return 0


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser("ingest", help="store device messages from the broker in PostgreSQL",
                                 description=service.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    flag(parser, "--database-url", Env.DATABASE_URL, "PostgreSQL connection URL", required=True)
    add_common_flags(parser)
    flag(parser, "--client-id", "IOTENANT_CLIENT_ID", "MQTT client id: stable per replica (its persistent session)",
         default=f"ingest-{socket.gethostname()}")
    flag(parser, "--share-group", Env.SHARE_GROUP, "shared subscription group (the tenant's secret group name)", default="ingest")
    flag(parser, "--inflight", "IOTENANT_INFLIGHT", "unacknowledged messages the broker may send (memory bound)", kind=int, default=2000)
    flag(parser, "--batch-size", "IOTENANT_BATCH_SIZE", "most messages per transaction", kind=int, default=1000)
    flag(parser, "--batch-seconds", "IOTENANT_BATCH_SECONDS", "longest wait to fill a batch", kind=float, default=0.05)
    flag(parser, "--replicas", Env.INGEST_REPLICAS, "ingest replicas sharing the licence's rate limit", kind=int, default=1)
    parser.set_defaults(run=_run)

