#!/usr/bin/env bash
# Installs what iotenant's tests and local demo need on a fresh Debian machine, and nothing twice:
# Debian's mosquitto and postgresql, a Python virtual environment with
# iotenant and its test dependencies, and the pinned control-plane binaries (built from Go modules).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${VENV:-.venv}"
PACKAGES=(mosquitto mosquitto-clients postgresql iproute2)

missing=()
for package in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then SUDO=sudo; else SUDO=; fi
  echo "installing Debian packages: ${missing[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

command -v go >/dev/null || { echo "Go 1.25 or newer is required on PATH to build the local control plane" >&2; exit 1; }

stamp="$VENV/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [[ ! -f "$stamp" ]]; then
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  "$VENV/bin/python" -m pip install -q -e '.[test]'
  rm -f "$VENV"/.installed-*
  touch "$stamp"
fi

# Builds etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, kwok, kwokctl and promtool
# once per pin and machine (a few minutes cold); prints the folder they are in.
"$VENV/bin/iotenant" dev build
