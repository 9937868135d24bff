"""The real node's pure parts: its configurations, the image archive layout, Debian sources."""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path

from iotenant import settings
from iotenant_testbed import cluster_dns, containerd_runtime, image_recipes, kube_proxy, kubelet, node_network
from iotenant_testbed.debian_sources import suite_sources
from iotenant_testbed.image_archive import layer_from_files, write_archive

HOST_SOURCES = """\
Types: deb
URIs: http://mirror.invalid/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.invalid/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""


def test_another_suite_reuses_the_hosts_mirrors_and_keyring(tmp_path: Path) -> None:
    sources = tmp_path / "debian.sources"
    sources.write_text(HOST_SOURCES)
    derived = suite_sources("trixie", sources=sources)
    assert "URIs: http://mirror.invalid/debian\nSuites: trixie trixie-updates" in derived
    assert "URIs: http://mirror.invalid/debian-security\nSuites: trixie-security" in derived
    assert derived.count("Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg") == 2
    assert "Suites: bookworm bookworm-updates bookworm-backports" in suite_sources("bookworm", ("bookworm-backports",), sources=sources)
    rolling = suite_sources("sid", sources=sources)  # no updates or security suite of its own
    assert "Suites: sid\n" in rolling and "security" not in rolling


def test_an_image_archive_names_the_rendered_reference_and_its_layer_by_digest(tmp_path: Path) -> None:
    layer = tmp_path / "layer.tar"
    layer_from_files({"/bin/tool": (b"#!/bin/sh\n", 0o755)}, {"/data": (0o750, 999, 999)}, layer)
    archive = tmp_path / "image.tar"
    write_archive(layer, settings.Images.database, {"Cmd": ["postgres"]}, archive)
    with tarfile.open(archive) as opened:
        manifest = json.load(opened.extractfile("manifest.json"))  # type: ignore[arg-type]
        config = json.load(opened.extractfile(manifest[0]["Config"]))  # type: ignore[arg-type]
        stored_layer = opened.extractfile(manifest[0]["Layers"][0]).read()  # type: ignore[union-attr]
    assert manifest[0]["RepoTags"] == [settings.Images.database]
    assert config["rootfs"]["diff_ids"] == [f"sha256:{hashlib.sha256(stored_layer).hexdigest()}"]
    assert config["config"] == {"Cmd": ["postgres"]} and config["os"] == "linux"
    with tarfile.open(layer) as opened:
        data = opened.getmember("data")
    assert (data.uid, data.gid, data.mode) == (999, 999, 0o750)


def test_images_are_laid_out_like_upstream_under_the_rendered_references() -> None:
    broker, database = image_recipes.broker_image(), image_recipes.database_image()
    assert broker.reference == settings.Images.broker and database.reference == settings.Images.database
    assert broker.versions == {"mosquitto": settings.MOSQUITTO_VERSION}
    assert any("/usr/lib/mosquitto_dynamic_security.so" in hook for hook in broker.after)
    assert database.container["Cmd"] == ["postgres"] and "PGDATA=/var/lib/postgresql/data" in database.container["Env"]
    assert image_recipes.PROMETHEUS_CONTAINER["Entrypoint"] == ["/bin/prometheus"]


def test_the_pod_network_never_masquerades_and_routes_through_the_bridge(tmp_path: Path) -> None:
    configuration = node_network.cni_configuration(tmp_path)
    bridge = configuration["plugins"][0]  # type: ignore[index]
    assert bridge["bridge"] == node_network.BRIDGE and bridge["ipMasq"] is False and bridge["isGateway"] is True
    assert bridge["ipam"]["ranges"] == [[{"subnet": node_network.POD_CIDR, "gateway": node_network.NODE_ADDRESS}]]
    assert node_network.NODE_ADDRESS == "10.244.0.1"


def test_the_runtime_and_kubelet_fit_a_host_without_systemd(tmp_path: Path) -> None:
    toml = containerd_runtime.configuration(tmp_path, image_recipes.PAUSE_REFERENCE, tmp_path / "net.d")
    assert "restrict_oom_score_adj = true" in toml and "SystemdCgroup = false" in toml
    assert f'sandbox_image = "{image_recipes.PAUSE_REFERENCE}"' in toml
    config = kubelet.configuration(tmp_path, tmp_path / "containerd.sock", tmp_path / "ca.crt")
    assert config["cgroupDriver"] == "cgroupfs" and config["failCgroupV1"] is False
    assert config["authentication"]["anonymous"] == {"enabled": False} and config["authorization"] == {"mode": "Webhook"}
    assert config["readOnlyPort"] == 0 and config["clusterDNS"] == [node_network.NODE_ADDRESS]


def test_node_ports_and_dns_listen_on_the_node_address_only(tmp_path: Path) -> None:
    proxy = kube_proxy.configuration(tmp_path / "kubeconfig", "node")
    assert proxy["nodePortAddresses"] == [f"{node_network.NODE_ADDRESS}/32"]
    assert proxy["conntrack"]["maxPerCore"] == 0
    corefile = cluster_dns.corefile(tmp_path / "kubeconfig")
    assert f"bind {node_network.NODE_ADDRESS}" in corefile and "forward" not in corefile
