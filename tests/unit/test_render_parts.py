"""The stack-part registry against what the parts render: each declaration (workload, volume, ways in,
clients, egress) has its counterpart in the manifests, and no selector picks another part's pods."""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from typing import Any

import pytest

from iotenant import render
from iotenant.render import guardrails
from iotenant.render.inputs import StackInput
from iotenant.render.parts import PARTS, enabled_parts, required_workloads, volumes
from iotenant.render.stack import render_customer_stack
from iotenant.render.stack_part import StackPart
from iotenant.vocabulary.kinds import NAMESPACED_KINDS, kind_of_manifest
from iotenant.vocabulary.meta import COMPONENT, Component
from stacks import fixture_stack

PLANS = ("starter", "professional", "enterprise")
WORKLOAD_KINDS = ("Deployment", "StatefulSet")


def tls_only(stack: StackInput) -> StackInput:
    spec = {**stack.spec, "broker": {**stack.spec.get("broker", {}), "tls": {"secretName": "own-cert", "only": True}}}
    return dataclasses.replace(stack, spec=spec, broker_tls_hash="0123")


def variants() -> list[StackInput]:
    """Every plan, with devices on plaintext and on TLS only."""
    return [variant(fixture_stack(plan)) for plan in PLANS for variant in (lambda s: s, tls_only)]


def workloads_of(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] in WORKLOAD_KINDS]


def undeclared_workloads(part: StackPart, stack: StackInput) -> list[str]:
    """The workloads ``part`` renders beyond the one it declares (empty: it declares what it runs)."""
    running = [o["metadata"]["name"] for o in workloads_of(part.render(stack) if part.render else [])]
    return [] if running == ([part.workload.name] if part.workload else []) else running


def client_ways() -> set[str]:
    """The ways in that admit the parts connecting to them."""
    return {way.policy for part in PARTS for way in part.ways_in if way.peers.clients}


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def test_names_are_unique_and_a_component_runs_in_one_part_only() -> None:
    assert len({part.name for part in PARTS}) == len(PARTS)
    running = [part.component for part in PARTS if part.workload is not None or part.render is None]
    assert len(running) == len(set(running)), f"two parts with pods share a component label, so a selector of one picks the other: {running}"
    assert {part.component for part in PARTS} <= {value for key, value in vars(Component).items() if key.isupper()}


@pytest.mark.parametrize("stack", variants(), ids=lambda s: f"{s.claims.plan if s.claims else 'none'}-{'tls' if s.exposure.tls_only else 'plain'}")
def test_each_part_renders_what_it_declares_and_selects_only_its_own_pods(stack: StackInput) -> None:
    everything = render_customer_stack(stack)
    for part in enabled_parts(stack):
        if part.render is None:
            continue
        own = part.render(stack)
        if part.workload is not None:
            (workload,) = [o for o in workloads_of(own) if (o["kind"], o["metadata"]["name"]) == (part.workload.kind, part.workload.name)]
            assert selects(part.selector(), workload["spec"]["template"]["metadata"]["labels"])
            assert bool(workload["spec"].get("volumeClaimTemplates")) == (part.volume is not None), part.name
        assert not undeclared_workloads(part, stack), f"{part.name} runs a workload it does not declare"
        strangers = [o["metadata"]["name"] for o in workloads_of(everything) if o not in own
                     and selects(part.selector(), o["spec"]["template"]["metadata"]["labels"])]
        assert not strangers, f"{part.name}'s selector also picks {strangers}"
    for service in (o for o in everything if o["kind"] == "Service"):
        picked = [o["metadata"]["name"] for o in workloads_of(everything) if selects(service["spec"]["selector"], o["spec"]["template"]["metadata"]["labels"])]
        assert len(picked) == 1, f"Service {service['metadata']['name']} must select one part's pods: {picked}"


def test_every_part_declared_in_a_render_module_is_in_the_list() -> None:
    declared = [value for module in pkgutil.iter_modules(render.__path__, "iotenant.render.")
                for value in vars(importlib.import_module(module.name)).values() if isinstance(value, StackPart)]
    assert {part.name for part in declared} <= {part.name for part in PARTS}, "a part that render.parts does not list is never rendered"


def test_every_port_a_parts_service_offers_is_opened_to_someone() -> None:
    for stack in variants():
        for part in enabled_parts(stack):
            opened = {port for way in part.ways_in if way.when(stack) for port in way.ports}
            for service in (o for o in (part.render(stack) if part.render else []) if o["kind"] == "Service"):
                offered = {port["port"] for port in service["spec"]["ports"] if port["name"] != "metrics"}
                assert offered <= opened, f"{part.name}: Service {service['metadata']['name']} offers {offered - opened}, which no way in opens"


def test_every_kind_the_stack_renders_is_watched_for_drift_and_pruned() -> None:
    rendered = {kind_of_manifest(o) for stack in variants() for o in render_customer_stack(stack)}
    unwatched = sorted(kind.kind for kind in rendered if kind.namespaced and kind not in NAMESPACED_KINDS)
    assert unwatched == [], f"kinds a stack renders that vocabulary.kinds.NAMESPACED_KINDS does not list: {unwatched}"


def test_every_declared_connection_and_way_out_exists() -> None:
    ways = client_ways()
    for part in PARTS:
        assert set(part.connects_to) <= ways, f"{part.name} connects to a way in that no part declares: {set(part.connects_to) - ways}"
        assert set(part.egress) <= set(guardrails.EGRESS), f"{part.name} needs a way out that guard rails cannot open"
    assert all(any(way in part.connects_to for part in PARTS) for way in ways), "a way in for clients that no part uses"


def test_every_way_in_opens_ports_its_pods_listen_on_and_every_policy_comes_from_a_declaration() -> None:
    declared = {way.policy for part in PARTS for way in part.ways_in} | {f"allow-{part.name}-to-{e}" for part in PARTS for e in part.egress}
    namespace_wide = {"default-deny", "allow-egress-dns-and-namespace", "allow-metrics-scraping"}
    rendered, opened, listening = set(), {}, {}
    for stack in variants():
        for part in enabled_parts(stack):
            listening.setdefault(part.name, set()).update(
                port["containerPort"] for o in workloads_of(part.render(stack) if part.render else [])
                for c in o["spec"]["template"]["spec"]["containers"] for port in c.get("ports", []))
            for way in part.ways_in:
                if way.when(stack):
                    opened.setdefault((part.name, way.policy), set()).update(way.ports)
        rendered |= {p["metadata"]["name"] for p in guardrails.network_policies(stack)}
    for (name, policy), ports in opened.items():
        assert ports <= listening[name], f"{policy} opens {ports - listening[name]}, where {name} never listens"
    assert rendered == declared | namespace_wide


def test_ready_waits_for_the_required_parts_and_volumes_come_from_the_declarations() -> None:
    assert [(w.kind, w.name) for w in required_workloads()] == [
        ("StatefulSet", "broker"), ("StatefulSet", "database"), ("StatefulSet", "ingest"), ("Deployment", "api")]
    assert volumes() == {"broker": "broker", "database": "database", "prometheus": None}


def test_a_part_missing_its_counterpart_is_caught() -> None:
    """A new part that runs a Deployment but forgets to declare it, and one that connects to a way no part has."""
    forgetful = StackPart(name="reports", component="reports", render=lambda stack: [
        {"kind": "Deployment", "metadata": {"name": "reports"}, "spec": {"template": {"metadata": {"labels": {COMPONENT: "reports"}}}}}])
    assert undeclared_workloads(forgetful, fixture_stack("starter")) == ["reports"]
    lost = dataclasses.replace(forgetful, connects_to=("allow-reports-database",))
    assert not set(lost.connects_to) <= client_ways()
