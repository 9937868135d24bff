"""What a part of a customer's stack declares about itself, beside its render function: the component it
is, what gates it, what it runs and whether Ready waits for that, its volume, and who may reach it.

Each part's module declares its ``StackPart``; ``render.parts`` lists them, and the stack, the
NetworkPolicies, the set of workloads Ready waits for and the volumes' classes are all derived from that
list, so a part is added in its own module and the list, and nowhere else.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from iotenant.render.inputs import StackInput
from iotenant.vocabulary.meta import COMPONENT

Manifest = dict[str, Any]


def always(stack: StackInput) -> bool:
    return True


@dataclass(frozen=True)
class Workload:
    """A Deployment or StatefulSet a part runs."""

    kind: str
    name: str


@dataclass(frozen=True)
class Volume:
    """A StatefulSet's persistent volume: its class is ``spec.<section>.storageClassName`` (no section: the
    operator's default class only), chosen when the volume is made and kept after."""

    section: str | None


@dataclass(frozen=True)
class Peers:
    """Who a way in admits: anyone; the namespaces that operator settings name (``OperatorSettings``
    fields); the pods of the parts that say they connect to it; the pods of the parts that scrape metrics."""

    anyone: bool = False
    namespaces: tuple[str, ...] = ()
    clients: bool = False
    scrapers: bool = False


@dataclass(frozen=True)
class WayIn:
    """A NetworkPolicy letting ``peers`` reach ``ports`` of the part's pods, while ``when`` holds."""

    policy: str
    ports: tuple[int, ...]
    peers: Peers
    when: Callable[[StackInput], bool] = always


@dataclass(frozen=True)
class StackPart:
    """One part of a customer stack.

    ``name`` says which part it is (unique; its golden manifests are named after it). ``component`` is its
    value of the component label, which its Services and workloads select on: only one part that runs
    pods may use a component. ``render`` is None for a part rendered elsewhere (a fleet's simulator).
    ``enabled`` is the licence feature, tier or plan that gates it (a disabled part renders nothing and
    opens nothing). ``connects_to`` names other parts' ways in (by policy name) that its pods use;
    ``scrapes`` says it scrapes the namespace's metrics ports; ``egress`` names ways out of the namespace
    it needs (``render.guardrails.EGRESS``)."""

    name: str
    component: str
    render: Callable[[StackInput], list[Manifest]] | None
    enabled: Callable[[StackInput], bool] = always
    workload: Workload | None = None
    required: bool = False
    volume: Volume | None = None
    ways_in: tuple[WayIn, ...] = ()
    connects_to: tuple[str, ...] = ()
    scrapes: bool = False
    egress: tuple[str, ...] = ()

    def selector(self) -> dict[str, str]:
        """The labels that pick this part's pods within its namespace."""
        return {COMPONENT: self.component}
