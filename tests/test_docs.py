"""The docs' shell blocks, run as a reader would run them, against the suite's cluster and operator."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from conftest import Cluster, RunningOperator, wait_for
from doc_blocks import run_block
from iotenant.licensing import licence as licences
from iotenant.licensing.trusted_issuers import TrustedIssuers

GROUP, VERSION, PLURAL = "iotenant.io", "v1alpha1", "customerinstances"
VENV_BIN = Path(sys.executable).parent  # iotenant


def reader(kube: Cluster) -> dict[str, str]:
    """How a reader's shell finds the cluster: the admin kubeconfig."""
    return dict(os.environ, KUBECONFIG=str(kube.kubeconfig))


def run(kube: Cluster, name: str, folder: Path) -> str:
    done = run_block(name, folder, [kube.binaries.path("kubectl").parent, VENV_BIN], env=reader(kube))
    assert done.returncode == 0, f"block {name}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def delete_instance(kube: Cluster, name: str) -> None:
    kube.kubectl("delete", "cust", name, "--wait=false")
    wait_for(lambda: kube.kubectl("get", "cust", name, check=False).returncode != 0, timeout=60, what=f"{name} gone")


def test_an_instance_as_the_concepts_page_applies_it_and_its_licence_inspected(
        kube: Cluster, operator: RunningOperator, servicemonitor_crd: None, tmp_path: Path) -> None:
    listed = run(kube, "using-an-instance", tmp_path)
    assert "globex" in listed and "globex-0042" in listed and "professional" in listed, listed
    inspected = run(kube, "licence-inspect", tmp_path)
    assert "globex-0042" in inspected and "professional" in inspected, inspected
    delete_instance(kube, "globex")


def test_a_device_fleet_as_the_concepts_page_declares_it(kube: Cluster, operator: RunningOperator, servicemonitor_crd: None,
                                                         tmp_path: Path) -> None:
    printed = run(kube, "a-device-fleet", tmp_path)
    assert "thermometers" in printed and printed.rstrip().splitlines()[-1].startswith("mqtt://thermo-001:"), printed
    delete_instance(kube, "acme")


def test_a_billing_issuers_licence_from_the_concepts_page_is_trusted_under_its_issuer_name(tmp_path: Path) -> None:
    """The keys and licence the page makes are what the operator trusts when given the JWKS under that name."""
    done = run_block("billing-licence", tmp_path, [VENV_BIN])
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    jwks = json.loads((tmp_path / "billing-jwks.json").read_text())
    token = (tmp_path / "umbrella-corp.jwt").read_text().strip()
    trusted = TrustedIssuers.parse({"umbrella-billing": jwks}, operator_issuer="iotenant-operator")
    issuer = trusted.issuer_of(licences.key_id_of(token))
    assert issuer == "umbrella-billing"
    verified = licences.verify(token, trusted.jwks_of(issuer), "umbrella-corp", now=time.time(), expected_issuer=issuer)
    assert verified.claims.plan == "enterprise" and verified.claims.iss == "umbrella-billing"


@pytest.fixture(autouse=True)
def _no_leftovers(kube: Cluster) -> None:
    """A block run twice (a retried test) finds no instance left from the first run."""
    for name in ("globex", "acme"):
        if kube.kubectl("get", "cust", name, check=False).returncode == 0:
            delete_instance(kube, name)
