#!/bin/sh
# Install the iotenant wheel and its dependencies, exactly as locked, into a new virtual environment.
# The Dockerfile, the test bed's image and the packaging test all run this script, so the test
# installs exactly what the image holds. requirements.lock pins every dependency with its hashes
# (pip-compile --generate-hashes from pyproject.toml): a file that differs from the one locked is
# refused. Usage: install-wheel.sh <venv folder> <wheel file> <requirements.lock>
set -eu
venv="$1"
wheel="$2"
lock="$3"
"${PYTHON:-python3}" -m venv "$venv"
pip="$venv/bin/pip"
"$pip" install --no-cache-dir --disable-pip-version-check --no-compile --require-hashes --no-deps -r "$lock"
"$pip" install --no-cache-dir --disable-pip-version-check --no-compile --no-deps "$wheel"
# Nothing the wheel needs is missing from the lock.
"$pip" check --disable-pip-version-check
