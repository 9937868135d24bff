"""One version: the package, the chart and the default image agree, so a release tag names all of them."""

from __future__ import annotations

import tomllib
from pathlib import Path

import yaml

from iotenant import __version__
from iotenant.settings import Images

REPO = Path(__file__).resolve().parents[2]


def test_the_package_the_chart_and_the_image_carry_one_version() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    chart = yaml.safe_load((REPO / "charts" / "iotenant" / "Chart.yaml").read_text())
    assert project["version"] == __version__ == chart["version"] == chart["appVersion"]
    assert Images().iotenant.endswith(f":{__version__}")
