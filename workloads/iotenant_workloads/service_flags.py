"""The flags every data-plane service shares (broker, licence, endpoints, logs), named by the contract
with the operator's rendered pods."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from iotenant import logs
from iotenant.environment_flags import flag
from iotenant.vocabulary.contract import JWKS_FILE, LICENCE_FILE, METRICS_PORT, MQTT_PORT, Env
from iotenant_workloads.mounted_licence import MountedLicence

log = logging.getLogger("iotenant.licence")


def add_common_flags(parser: argparse.ArgumentParser) -> None:
    """Flags every data-plane service shares: broker, licence, endpoints and logs."""
    flag(parser, "--mqtt-host", Env.MQTT_HOST, "broker host", default="127.0.0.1")
    flag(parser, "--mqtt-port", Env.MQTT_PORT, "broker port", kind=int, default=MQTT_PORT)
    flag(parser, "--mqtt-username", Env.MQTT_USERNAME, "broker username of this service", default="")
    flag(parser, "--mqtt-password", "IOTENANT_MQTT_PASSWORD", "broker password (prefer --mqtt-password-file)", default="")
    flag(parser, "--mqtt-password-file", Env.MQTT_PASSWORD_FILE, "file holding the broker password", default="")
    flag(parser, "--licence-file", Env.LICENCE_FILE, "the mounted licence JWT", default=LICENCE_FILE)
    flag(parser, "--jwks-file", Env.JWKS_FILE, "the mounted JWKS that verifies it", default=JWKS_FILE)
    flag(parser, "--customer-id", Env.CUSTOMER_ID, "the licence subject to require")
    flag(parser, "--licence-grace-seconds", Env.LICENCE_GRACE_SECONDS,
         "how long an expired licence keeps serving (the operator's expiry grace)", kind=int, default=0)
    flag(parser, "--metrics-address", "IOTENANT_METRICS_ADDRESS", "address of /healthz, /readyz, /metrics", default="0.0.0.0")
    flag(parser, "--metrics-port", Env.METRICS_PORT, "port of /healthz, /readyz, /metrics", kind=int, default=METRICS_PORT)
    logs.add_flags(parser)


def mqtt_password(args: argparse.Namespace) -> str:
    """The broker password: from its file when one is named (as in the pods), else the flag's value."""
    return Path(args.mqtt_password_file).read_text().strip() if args.mqtt_password_file else (args.mqtt_password or "")


def mounted_licence(args: argparse.Namespace) -> MountedLicence:
    """The licence the service runs under, verified once now: its limits logged, or why there is none.

    A service starts either way; without a valid licence it serves nothing (ingest consumes nothing,
    the API answers 503 ``licence_invalid``) until one is mounted."""
    licence = MountedLicence(Path(args.licence_file), Path(args.jwks_file), args.customer_id, args.licence_grace_seconds)
    verified = licence.refresh()
    if verified is None:
        log.error("no valid licence: %s", licence.problem)
    else:
        claims = verified.claims
        log.info("licence %s: plan %s, %d devices, %d msg/s", claims.jti, claims.plan, claims.limits.maxDevices,
                 claims.limits.maxMessagesPerSecond)
    return licence
