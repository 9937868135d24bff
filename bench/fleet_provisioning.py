"""DeviceFleet figures: the operator on the local control plane driving a real Mosquitto.

The tenant's broker runs on loopback from the configuration the operator generated (as in the
tests); the enterprise plan is given room for the big fleet beside the others. While 200 simulated devices publish once a second and one probe device publishes every
50 ms, this prints:
- seconds from applying --devices (default 10,000; beyond the 10,000 a fleet may hold, several fleets
  applied at once) to Ready, and until sampled devices (first, last and 48 random ones) connect with
  their credentials;
- the probe's worst and p99 PUBACK latency during that admission (the broker is busy meanwhile);
- broker resident memory and dynamic-security file size with those identities;
- seconds for one device added to a small fleet to become connectable, p50 and max of --samples,
  from the start of `kubectl apply` and from its return;
- the first big fleet (up to 10,000 devices) played by one simulator process (`iotenant simulate`, every device connected and
  publishing every --storm-interval seconds): seconds until all are connected, the simulator's resident
  memory beside the memory request the operator renders for it, and its CPU;
- a reconnect storm: the broker restarted under those connected devices: seconds until every device is
  connected again, and the broker CPU seconds it took.

Usage: python bench/fleet_provisioning.py [--devices 10000] [--samples 5] [--storm-interval 60]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml
from kubernetes import config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from bench_cluster import fresh_cluster, stop  # noqa: E402

from conftest import Cluster  # noqa: E402
from iotenant.device_fleet.manifests import simulator_resources  # noqa: E402
from iotenant.licensing.plans import DEFAULT_CATALOGUE  # noqa: E402
from iotenant.mosquitto.identities import DeviceCredentials  # noqa: E402
from iotenant_testbed.loopback import free_port  # noqa: E402
from mqtt_probe import Probe, Refused  # noqa: E402
from real_services import cpu_seconds, resident_kib, scrape_metrics  # noqa: E402
from tenants import Tenant, start_tenant  # noqa: E402

NAME = "iotenant-fleet-bench"
FLEET_CRD = Path(__file__).resolve().parents[1] / "crds" / "devicefleets.iotenant.io.yaml"


def devices_per_fleet() -> int:
    """The most devices one fleet may declare (the CRD's bound on spec.devices.count)."""
    crd = yaml.safe_load(FLEET_CRD.read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return int(spec["properties"]["devices"]["properties"]["count"]["maximum"])


def big_fleets(devices: int) -> dict[str, int]:
    """Fleet name -> device count: ``devices`` split into fleets as large as a fleet may be."""
    most = devices_per_fleet()
    return {f"big{index}": min(most, devices - start) for index, start in enumerate(range(0, devices, most))}


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def connects(tenant: Tenant, credentials: DeviceCredentials) -> bool:
    try:
        Probe.connect(tenant.broker.port, credentials.username, credentials.password).close()
    except (Refused, TimeoutError, OSError):
        return False
    return True


def wait_connectable(tenant: Tenant, fleet: str, devices: list[str], timeout: float = 600) -> None:
    """Until each of ``devices`` connects with its credentials; the fleet's Secret is read again only
    while a device is missing from it or refused (reading 10,000 credentials takes a while itself)."""
    deadline = time.monotonic() + timeout
    credentials: dict[str, DeviceCredentials] = {}
    pending = list(devices)
    while pending:
        known = credentials.get(pending[0])
        if known is not None and connects(tenant, known):
            pending.pop(0)
            continue
        if time.monotonic() > deadline:
            raise TimeoutError(f"{pending[0]} not connectable after {timeout:.0f} s")
        time.sleep(0.05)
        try:
            credentials = tenant.credentials(fleet)
        except AssertionError:
            credentials = {}


class LatencyProbe:
    """One connected device publishing QoS 1 every 50 ms; records each PUBACK's delay."""

    def __init__(self, tenant: Tenant) -> None:
        tenant.apply_fleet("probe", {"ids": ["probe-1"]})
        tenant.wait_fleet("probe", "True")
        credentials = tenant.credentials("probe")["probe-1"]
        self.device = Probe.connect(tenant.broker.port, credentials.username, credentials.password)
        self.delays: list[float] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                self.device.publish("iot/probe-1/telemetry", b'{"v":2}')
            except TimeoutError:  # no PUBACK within 10 s: counted as 10 s
                pass
            self.delays.append(time.monotonic() - started)
            time.sleep(0.05)

    def window(self) -> list[float]:
        taken, self.delays = self.delays, []
        return taken


def start_operator(root: Path, kubeconfig: Path, addresses: Path, devices: int) -> subprocess.Popen[bytes]:
    """The operator, with an enterprise plan that has room for the big fleet beside the busy, probe and extra fleets."""
    catalogue = copy.deepcopy(DEFAULT_CATALOGUE)
    catalogue["enterprise"]["limits"]["maxDevices"] = devices + 1000
    plans = root / "plans.yaml"
    plans.write_text(yaml.safe_dump(catalogue))
    return subprocess.Popen(
        [sys.executable, "-m", "iotenant", "operator", "--resync-seconds", "30", "--metrics-port", "0",
         "--health-port", "0", "--log-format", "text", "--broker-addresses-file", str(addresses), "--plan-catalogue", str(plans)],
        env=dict(os.environ, KUBECONFIG=str(kubeconfig)), stdout=(root / "operator.log").open("wb"), stderr=subprocess.STDOUT,
    )


def start_busy_devices(tenant: Tenant, root: Path) -> subprocess.Popen[bytes]:
    """A fleet of 200 simulated devices publishing once a second."""
    tenant.apply_fleet("busy", {"count": 200, "idPrefix": "busy-"})
    tenant.wait_fleet("busy", "True", timeout=120)
    folder = root / "busy-credentials"
    folder.mkdir()
    for device, credentials in tenant.credentials("busy").items():
        (folder / device).write_text(credentials.url())
    return subprocess.Popen(
        [sys.executable, "-m", "iotenant", "simulate", "--credentials-dir", str(folder), "--interval", "1",
         "--mqtt-host-override", "127.0.0.1", "--mqtt-port-override", str(tenant.broker.port),
         "--metrics-port", "0", "--log-format", "text", "--log-level", "warning"],
        stdout=(root / "simulator.log").open("wb"), stderr=subprocess.STDOUT,
    )


def big_fleet_figures(tenant: Tenant, probe: LatencyProbe, devices: int) -> dict[str, float]:
    """Apply the big fleets: until Ready, until sampled devices connect, the probe meanwhile, the broker after."""
    results: dict[str, float] = {}
    fleets = big_fleets(devices)
    started = time.monotonic()
    for name, count in fleets.items():
        tenant.apply_fleet(name, {"count": count, "idPrefix": f"{name}-"})
    for name in fleets:
        tenant.wait_fleet(name, "True", timeout=1800)
    results[f"apply_to_ready_{devices}_devices_s"] = time.monotonic() - started
    every = [(name, f"{name}-{n:03d}") for name, count in fleets.items() for n in range(1, count + 1)]
    sample = [every[0], every[-1], *random.sample(every[1:-1], min(48, len(every) - 2))]
    for name in fleets:
        wait_connectable(tenant, name, [device for fleet, device in sample if fleet == name])
    results[f"apply_to_all_sampled_connectable_{devices}_devices_s"] = time.monotonic() - started
    during = probe.window()
    results["probe_puback_p99_ms_during_admission"] = percentile(during, 0.99) * 1000
    results["probe_puback_max_ms_during_admission"] = max(during) * 1000
    results["probe_dropped_during_admission"] = float(probe.device.disconnected.is_set())
    time.sleep(5)
    results[f"broker_rss_mib_{devices}_identities_200_connected"] = resident_kib(tenant.broker.process.pid) / 1024
    results["dynamic_security_file_mib"] = (tenant.broker.data_dir / "dynamic-security.json").stat().st_size / 2**20
    return results


def added_device_figures(tenant: Tenant, samples: int) -> dict[str, float]:
    """One device added to a small fleet at a time, until it connects."""
    ids = ["extra-0"]
    tenant.apply_fleet("extra", {"ids": ids})
    tenant.wait_fleet("extra", "True", timeout=120)
    delays, accepted_delays = [], []
    for n in range(1, samples + 1):
        ids.append(f"extra-{n}")
        started = time.monotonic()
        tenant.apply_fleet("extra", {"ids": ids})  # kubectl apply: its own start-up takes a few tenths of a second here
        accepted = time.monotonic()
        wait_connectable(tenant, "extra", ids[-1:], timeout=300)
        delays.append(time.monotonic() - started)
        accepted_delays.append(time.monotonic() - accepted)
    return {"one_added_device_connectable_p50_s": percentile(delays, 0.5), "one_added_device_connectable_max_s": max(delays),
            "one_added_device_connectable_after_kubectl_p50_s": percentile(accepted_delays, 0.5)}


def connected_devices(metrics_port: int) -> float:
    """The simulator's iotenant_simulator_connected_devices (0 while it cannot answer)."""
    try:
        return scrape_metrics(metrics_port).get("iotenant_simulator_connected_devices", 0.0)
    except OSError:
        return 0.0


def wait_all_connected(simulator: subprocess.Popen[bytes], metrics_port: int, devices: int, timeout: float) -> float:
    """Seconds until the simulator reports every device connected."""
    started = time.monotonic()
    while connected_devices(metrics_port) < devices:
        if simulator.poll() is not None:
            raise RuntimeError(f"the simulator exited with {simulator.returncode} (see big-simulator.log)")
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"{connected_devices(metrics_port):.0f} of {devices} devices connected after {timeout:.0f} s")
        time.sleep(0.5)
    return time.monotonic() - started


def storm_figures(tenant: Tenant, root: Path, devices: int, interval: float, results: dict[str, float]) -> None:
    """The first big fleet in one simulator process; then the broker restarted under it (figures added to ``results``
    as they are taken: a failure later keeps them)."""
    folder = root / "big-credentials"
    folder.mkdir()
    for device, credentials in tenant.credentials("big0").items():
        (folder / device).write_text(credentials.url())
    metrics_port = free_port()
    simulator = subprocess.Popen(
        [sys.executable, "-m", "iotenant", "simulate", "--credentials-dir", str(folder), "--interval", str(interval),
         "--mqtt-host-override", "127.0.0.1", "--mqtt-port-override", str(tenant.broker.port),
         "--metrics-address", "127.0.0.1", "--metrics-port", str(metrics_port), "--log-format", "text", "--log-level", "error"],
        stdout=(root / "big-simulator.log").open("wb"), stderr=subprocess.STDOUT,
    )
    try:
        results[f"simulator_all_{devices}_connected_s"] = wait_all_connected(simulator, metrics_port, devices, timeout=900)
        cpu, started = cpu_seconds(simulator.pid), time.monotonic()
        time.sleep(max(10.0, interval))  # a full interval: every device published once
        results["simulator_cpu_share_of_one_core"] = (cpu_seconds(simulator.pid) - cpu) / (time.monotonic() - started)
        results["simulator_rss_mib"] = resident_kib(simulator.pid) / 1024
        results["simulator_memory_request_mib"] = float(simulator_resources(devices)["requests"]["memory"].removesuffix("Mi"))
        tenant.broker.stop()
        deadline = time.monotonic() + 60
        while connected_devices(metrics_port) > 0 and time.monotonic() < deadline:  # every device saw it go
            time.sleep(0.2)
        broker_started = time.monotonic()
        tenant.broker.start()
        cpu = cpu_seconds(tenant.broker.process.pid)
        wait_all_connected(simulator, metrics_port, devices, timeout=900)
        results[f"storm_all_{devices}_reconnected_s"] = time.monotonic() - broker_started
        results["storm_broker_cpu_s"] = cpu_seconds(tenant.broker.process.pid) - cpu
    finally:
        simulator.terminate()
        simulator.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=10000)
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--storm-interval", type=float, default=60.0, help="seconds between a simulated device's messages")
    args = parser.parse_args()

    kubeconfig, binaries = fresh_cluster(NAME)
    kube = Cluster(name=NAME, kubeconfig=kubeconfig, binaries=binaries, api=config.new_client_from_config(config_file=str(kubeconfig)))
    root = Path(tempfile.mkdtemp(prefix="iotenant-fleet-bench-"))
    root.chmod(0o755)
    addresses = root / "addresses.json"
    addresses.write_text("{}")
    operator = start_operator(root, kubeconfig, addresses, args.devices)
    simulator: subprocess.Popen[bytes] | None = None
    tenant: Tenant | None = None
    results: dict[str, float] = {}
    try:
        tenant = start_tenant(kube, addresses, root, "bench", "enterprise")
        simulator = start_busy_devices(tenant, root)
        probe = LatencyProbe(tenant)
        probe.thread.start()
        time.sleep(5)
        results["probe_puback_p99_ms_quiet"] = percentile(probe.window(), 0.99) * 1000
        results.update(big_fleet_figures(tenant, probe, args.devices))
        results.update(added_device_figures(tenant, args.samples))
        probe.stop.set()
        probe.thread.join()
        probe.device.close()
        storm_figures(tenant, root, big_fleets(args.devices)["big0"], args.storm_interval, results)
    finally:
        if simulator is not None:
            simulator.terminate()
            simulator.wait(timeout=30)
        if tenant is not None:
            tenant.stop()
        stop(operator, NAME)
        print(json.dumps({key: round(value, 3) for key, value in results.items()}, indent=2))


if __name__ == "__main__":
    main()
