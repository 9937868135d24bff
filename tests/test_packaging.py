"""The image's Python environment, built here exactly as the Dockerfile builds it.

The wheel is built from this checkout and installed with scripts/install-wheel.sh, the script the
Dockerfile runs, into a fresh virtual environment; every entry point must then answer --help. A
dependency missing from pyproject.toml fails here before it fails in a container.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE_COPIES = ["pyproject.toml", "requirements.lock", "README.md", "operator", "workloads"]
COMMANDS = [[], ["operator"], ["ingest"], ["api"], ["simulate"], ["licence"], ["licence", "issue"]]


@pytest.fixture(scope="module")
def image_environment(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # The build context holds what the Dockerfile copies, nothing more (and the work tree stays untouched).
    context = tmp_path_factory.mktemp("context")
    for name in DOCKERFILE_COPIES:
        source = REPO / name
        (shutil.copytree if source.is_dir() else shutil.copy2)(source, context / name)
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-cache-dir", "--wheel-dir", str(dist), str(context)],
                   check=True, capture_output=True, text=True)
    (wheel,) = dist.glob("iotenant-*.whl")
    venv = tmp_path_factory.mktemp("image") / "iotenant"
    clean_env = {key: value for key, value in os.environ.items() if not key.startswith(("PYTHON", "VIRTUAL_ENV", "IOTENANT_"))}
    result = subprocess.run([str(REPO / "scripts" / "install-wheel.sh"), str(venv), str(wheel), str(context / "requirements.lock")],
                            env={**clean_env, "PYTHON": sys.executable}, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return venv


def test_the_dockerfile_installs_with_the_same_script() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "COPY scripts/install-wheel.sh /usr/local/bin/install-wheel" in dockerfile
    assert "COPY requirements.lock ./" in dockerfile
    assert re.search(r"^RUN .*install-wheel /opt/iotenant /dist/iotenant-\*\.whl requirements\.lock$", dockerfile, re.M)
    final_stage = dockerfile.rsplit("\nFROM ", 1)[1]
    assert "USER 10001:10001" in final_stage and "COPY --from=build /opt/iotenant /opt/iotenant" in final_stage
    assert not re.search(r"^RUN .*(pip|apt-get|gcc)", final_stage, re.M), "the final stage must not install anything"
    assert re.search(r"^ARG PYTHON_IMAGE=python:\d+\.\d+\.\d+-slim", dockerfile, re.M), "the base image is pinned by version"
    for label in ("title", "description", "version", "licenses"):
        assert f"org.opencontainers.image.{label}=" in final_stage


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "iotenant")
def test_every_entry_point_runs_from_the_installed_wheel(image_environment: Path, command: list[str], tmp_path: Path) -> None:
    # Run outside the checkout, so nothing is imported from the work tree by accident.
    result = subprocess.run([str(image_environment / "bin" / "iotenant"), *command, "--help"], cwd=tmp_path,
                            env={"PATH": f"{image_environment / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path)},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "usage: iotenant" in result.stdout


def test_the_image_carries_no_test_bed(image_environment: Path, tmp_path: Path) -> None:
    result = subprocess.run([str(image_environment / "bin" / "iotenant"), "dev", "--help"], cwd=tmp_path,
                            env={"PATH": f"{image_environment / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path)},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "invalid choice: 'dev'" in result.stderr, result.stderr
    assert not list(image_environment.glob("lib/python*/site-packages/iotenant_testbed"))


def test_the_installed_services_import_everything_they_use(image_environment: Path, tmp_path: Path) -> None:
    modules = ["iotenant.kopf_handlers", "iotenant.device_fleet.reconciler", "iotenant.kube.leader_election",
               "iotenant_workloads.ingest.command", "iotenant_workloads.api.app", "iotenant_workloads.simulate.simulator",
               "iotenant_workloads.tenant_schema"]
    script = "import importlib, sys\nfor name in sys.argv[1:]:\n    module = importlib.import_module(name)\n    assert '/work' not in module.__file__ or 'site-packages' in module.__file__, module.__file__\n"
    result = subprocess.run([str(image_environment / "bin" / "python"), "-c", script, *modules], cwd=tmp_path,
                            env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
