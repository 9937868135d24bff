"""``iotenant dev up|env|down|status|build``: the local control plane's command-line contract."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time

from iotenant.cli import UserFacingError
from iotenant_testbed import cluster
from iotenant_testbed.binaries import MissingPart, ensure_binaries


def _up(args: argparse.Namespace) -> int:
    started = time.monotonic()
    kubeconfig = cluster.up(args.name, nodes=args.nodes)
    print(f"iotenant: cluster {args.name!r} ready in {time.monotonic() - started:.1f} s", file=sys.stderr)
    print(kubeconfig)
    return 0


def _env(args: argparse.Namespace) -> int:
    print(f"export KUBECONFIG={shlex.quote(str(cluster.LocalCluster(args.name).kubeconfig))}")
    return 0


def _down(args: argparse.Namespace) -> int:
    stopped = cluster.down(args.name, keep_data=args.keep_data)
    if stopped:
        print(f"iotenant: stopped {', '.join(stopped)} of cluster {args.name!r}", file=sys.stderr)
    else:
        print(f"iotenant: cluster {args.name!r} was not running", file=sys.stderr)
    return 0


def _status(args: argparse.Namespace) -> int:
    print(json.dumps(cluster.status(args.name), indent=2))
    return 0


def _demo(args: argparse.Namespace) -> int:
    from iotenant_testbed import demo

    return demo.run(args.name)


def _build(args: argparse.Namespace) -> int:
    for folder in ensure_binaries().folders():
        print(folder)
    return 0


def _guarded(handler):  # type: ignore[no-untyped-def]
    def run(args: argparse.Namespace) -> int:
        try:
            return int(handler(args))
        except MissingPart as error:
            raise UserFacingError(str(error)) from error
        except RuntimeError as error:
            raise UserFacingError(str(error)) from error

    return run


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    dev = commands.add_parser(
        "dev",
        help="run a local Kubernetes control plane (etcd, kube-apiserver, controller-manager, scheduler, kwok)",
        description="A real Kubernetes control plane on loopback, built from pinned Go modules; no Docker needed.",
    )
    actions = dev.add_subparsers(dest="action", required=True, metavar="ACTION")

    def add(name: str, handler, help_text: str) -> argparse.ArgumentParser:  # type: ignore[no-untyped-def]
        parser = actions.add_parser(name, help=help_text, description=help_text)
        parser.add_argument("--name", default=cluster.DEFAULT_NAME, help="cluster name (default: %(default)s)")
        parser.set_defaults(run=_guarded(handler))
        return parser

    up = add("up", _up, "start or reuse the cluster; the last line printed is the kubeconfig path")
    up.add_argument("--nodes", type=int, default=cluster.FAKE_NODE_COUNT, help="fake kwok nodes (default: %(default)s)")
    add("env", _env, "print `export KUBECONFIG=...` for the cluster")
    down = add("down", _down, "stop every process that `up` started, by process id, and delete the cluster")
    down.add_argument("--keep-data", action="store_true", help="only stop the processes; `up` resumes with the same data")
    add("demo", _demo, "the main job: cluster, CRDs, the operator and the examples, status shown until Ctrl-C")
    add("status", _status, "print the cluster's kubeconfig path and running components as JSON")
    build = actions.add_parser("build", help="build (or reuse) the pinned control-plane binaries and print their folders")
    build.set_defaults(run=_guarded(_build))
