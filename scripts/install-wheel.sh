#!/bin/sh
# Install the iotenant wheel (and its dependencies) into a new virtual environment.
# The Dockerfile and the packaging test both run this script, so the test installs exactly what
# the image holds. Usage: install-wheel.sh <venv folder> <wheel file>
set -eu
venv="$1"
wheel="$2"
"${PYTHON:-python3}" -m venv "$venv"
"$venv/bin/pip" install --no-cache-dir --disable-pip-version-check --no-compile "$wheel"
