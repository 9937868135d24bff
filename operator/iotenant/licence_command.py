"""``iotenant licence keygen|issue|inspect|verify|rotate-key``."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from iotenant.licensing import keys as licence_keys, licence as licences
from iotenant.licensing.plans import load_catalogue
from iotenant.timestamps import rfc3339


def _read_token(args: argparse.Namespace) -> str:
    if args.file:
        return Path(args.file).read_text().strip()
    if args.token and args.token != "-":
        return str(args.token).strip()
    return sys.stdin.read().strip()


def _trusted_keys(args: argparse.Namespace) -> dict[str, Any]:
    if args.jwks:
        return dict(json.loads(Path(args.jwks).read_text()))
    from iotenant.kube.client import ClusterAPI
    from iotenant.licensing import signing_keys
    from iotenant.vocabulary.kinds import CONFIG_MAP

    api = ClusterAPI.from_environment()
    config_map = api.get(CONFIG_MAP, signing_keys.JWKS_CONFIG_MAP, args.namespace)
    if config_map is None:
        raise SystemExit(f"iotenant: no ConfigMap {args.namespace}/{signing_keys.JWKS_CONFIG_MAP}: is the operator running?")
    return dict(json.loads(config_map["data"][signing_keys.JWKS_KEY]))


def _keygen(args: argparse.Namespace) -> int:
    print(licence_keys.write_key_pair(Path(args.private_key), Path(args.jwks)).kid)
    return 0


def _issue(args: argparse.Namespace) -> int:
    catalogue = load_catalogue(Path(args.plan_catalogue) if args.plan_catalogue else None)
    if args.plan not in catalogue:
        raise SystemExit(f"iotenant: unknown plan {args.plan!r}; the catalogue has {', '.join(sorted(catalogue))}")
    key = licence_keys.SigningKey.from_pem(Path(args.private_key).read_bytes())
    start = time.time() + args.starts_in_days * 86400
    claims = catalogue[args.plan].claims(args.subject, args.issuer, int(args.days * 86400), now=start)
    print(licences.sign(claims, key))
    return 0


def _describe(verified: licences.VerifiedLicence) -> dict[str, Any]:
    claims = verified.claims
    return {
        "valid": not verified.expired,
        "keyId": verified.key_id,
        "plan": claims.plan,
        "monitoringTier": claims.monitoring.tier,
        "issuedAt": rfc3339(claims.iat),
        "notBefore": rfc3339(claims.nbf),
        "expiresAt": rfc3339(claims.exp),
        "expiresInDays": round((claims.exp - time.time()) / 86400, 1),
        "claims": claims.to_payload(),
    }


def _verify_or_explain(args: argparse.Namespace) -> licences.VerifiedLicence | None:
    try:
        verified = licences.verify(_read_token(args), _trusted_keys(args), args.subject)
        return licences.require_current(verified) if args.command_name == "verify" else verified
    except licences.LicenceInvalid as invalid:
        print(f"invalid licence: {invalid.reason}: {invalid.message}", file=sys.stderr)
        return None


def _inspect(args: argparse.Namespace) -> int:
    verified = _verify_or_explain(args)
    if verified is None:
        return 1
    print(json.dumps(_describe(verified), indent=2))
    if verified.expired:
        print(f"invalid licence: {licences.EXPIRED}: expired at {rfc3339(verified.claims.exp)}", file=sys.stderr)
        return 1
    return 0


def _verify(args: argparse.Namespace) -> int:
    verified = _verify_or_explain(args)
    if verified is None:
        return 1
    claims = verified.claims
    print(f"valid: {claims.plan} licence {claims.jti} for {claims.sub}, tier {claims.monitoring.tier}, expires {rfc3339(claims.exp)}")
    return 0


def _rotate(args: argparse.Namespace) -> int:
    from iotenant.kube.client import ClusterAPI
    from iotenant.licensing import signing_keys

    old, new = signing_keys.rotate(ClusterAPI.from_environment(), args.namespace)
    print(f"active signing key {old} -> {new}; the operator re-signs every licence and retires {old} once unused")
    return 0


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser("licence", help="issue, inspect and verify licences; rotate the operator's signing key")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    namespace_default = os.environ.get("IOTENANT_NAMESPACE", "iotenant-system")

    keygen = actions.add_parser("keygen", help="make an RSA key pair for a billing issuer: private PEM and public JWKS")
    keygen.add_argument("--private-key", required=True, help="where to write the private key (PEM, mode 0600)")
    keygen.add_argument("--jwks", required=True, help="where to write the public JWKS (give it to the operator)")
    keygen.set_defaults(run=_keygen)

    issue = actions.add_parser("issue", help="sign a licence for a customer and print it")
    issue.add_argument("--private-key", required=True, help="PEM file of the issuer's RSA private key")
    issue.add_argument("--subject", required=True, help="the customerId (the CustomerInstance's spec.customerId)")
    issue.add_argument("--plan", required=True, help="a plan of the catalogue")
    issue.add_argument("--issuer", default="billing", help="the iss claim (default: %(default)s)")
    issue.add_argument("--days", type=float, default=365, help="validity in days (default: %(default)s)")
    issue.add_argument("--starts-in-days", type=float, default=0, help="nbf offset from now, may be negative (default: 0)")
    issue.add_argument("--plan-catalogue", default=os.environ.get("IOTENANT_PLAN_CATALOGUE"), help="[IOTENANT_PLAN_CATALOGUE]")
    issue.set_defaults(run=_issue)

    for name, handler, text in (
        ("inspect", _inspect, "verify a licence and print its claims, expiry and tier (exit 1 if not valid)"),
        ("verify", _verify, "verify a licence: one line, exit 0 if valid, 1 with the reason if not"),
    ):
        action = actions.add_parser(name, help=text, description=text)
        action.add_argument("token", nargs="?", help="the JWT, or - (default) to read standard input")
        action.add_argument("--file", help="read the JWT from this file")
        action.add_argument("--jwks", help="JWKS file of trusted keys (default: ConfigMap licence-keys in the operator namespace)")
        action.add_argument("--namespace", default=namespace_default, help="the operator namespace [IOTENANT_NAMESPACE]")
        action.add_argument("--subject", help="require this customerId as sub")
        action.set_defaults(run=handler, command_name=name)

    rotate = actions.add_parser("rotate-key", help="add a signing key and make it active (the operator re-signs every licence)")
    rotate.add_argument("--namespace", default=namespace_default, help="the operator namespace [IOTENANT_NAMESPACE]")
    rotate.set_defaults(run=_rotate)
