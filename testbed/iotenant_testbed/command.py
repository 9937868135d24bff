"""``iotenant dev up|env|down|status|build``: the local control plane's command-line contract."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time

from iotenant.cli import UserFacingError
from iotenant_testbed import cluster, mosquitto_package
from iotenant_testbed.binaries import MissingPart, ensure_binaries


def _with_real_node(args: argparse.Namespace) -> bool:
    """A new cluster gets the real node unless told otherwise; an existing one stays as it was made."""
    local = cluster.LocalCluster(args.name)
    existing = local.state_dir.is_dir() and local.kubeconfig.is_file()
    if not existing:
        return args.real_node is not False
    has_node = local.real_node_marker.is_file()
    if args.real_node is not None and args.real_node != has_node:
        raise UserFacingError(f"cluster {args.name!r} was made {'with' if has_node else 'without'} the real node: "
                              f"`iotenant dev down --name {args.name}` first to make it anew")
    return has_node


def _up(args: argparse.Namespace) -> int:
    started = time.monotonic()
    with_real_node = _with_real_node(args)
    nodes = args.nodes if args.nodes is not None else (0 if with_real_node else cluster.FAKE_NODE_COUNT)
    kubeconfig = cluster.up(args.name, nodes=nodes, with_real_node=with_real_node)
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
    for release in (mosquitto_package.SHIPPED, mosquitto_package.PREVIOUS):
        print(mosquitto_package.unpack(release).root)
    return 0


def _docs(args: argparse.Namespace) -> int:
    from iotenant_testbed import reference_docs

    for path in reference_docs.write():
        print(f"wrote {path.relative_to(reference_docs.REPO)}")
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
        help="run a local Kubernetes cluster (etcd, kube-apiserver, controller-manager, scheduler, a real node, kwok)",
        description="A real Kubernetes cluster on this machine, built from pinned Go modules and Debian packages; no Docker needed.",
    )
    actions = dev.add_subparsers(dest="action", required=True, metavar="ACTION")

    def add(name: str, handler, help_text: str) -> argparse.ArgumentParser:  # type: ignore[no-untyped-def]
        parser = actions.add_parser(name, help=help_text, description=help_text)
        parser.add_argument("--name", default=cluster.DEFAULT_NAME, help="cluster name (default: %(default)s)")
        parser.set_defaults(run=_guarded(handler))
        return parser

    up = add("up", _up, "start or reuse the cluster; the last line printed is the kubeconfig path")
    up.add_argument("--real-node", action=argparse.BooleanOptionalAction, default=None,
                    help="give the cluster this machine's real node (containerd, kubelet, kube-proxy, cluster DNS, the "
                         "stack's images); needs root and changes the host until `down` (default: on for a new "
                         "cluster, as it was made for an existing one)")
    up.add_argument("--nodes", type=int, default=None,
                    help=f"fake kwok nodes, which run nothing (default: 0 with the real node, {cluster.FAKE_NODE_COUNT} without)")
    add("env", _env, "print `export KUBECONFIG=...` for the cluster")
    down = add("down", _down, "stop every process that `up` started, by process id, and delete the cluster")
    down.add_argument("--keep-data", action="store_true", help="only stop the processes; `up` resumes with the same data")
    add("demo", _demo, "the main job: cluster, CRDs, the operator and the examples, status shown until Ctrl-C")
    add("status", _status, "print the cluster's kubeconfig path and running components as JSON")
    build = actions.add_parser("build", help="build (or reuse) the pinned control-plane binaries, unpack the shipped Mosquitto "
                               "(and the previous one, whose volumes the tests upgrade), and print their folders")
    build.set_defaults(run=_guarded(_build))
    docs = actions.add_parser("docs", help="write docs/reference/ anew from the definitions it describes (flags, chart values, "
                              "CRDs, plans, metrics)")
    docs.set_defaults(run=_guarded(_docs))
