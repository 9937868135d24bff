#!/usr/bin/env bash
# Installs what iotenant's tests and local demo need on a fresh Debian machine, and nothing twice:
# Debian's postgresql and mosquitto clients, a Python virtual environment with iotenant and its test
# dependencies, the pinned control-plane binaries (built from Go modules) and the shipped Mosquitto
# (Debian's build of the image's release, unpacked into a private folder by `iotenant dev build`).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${VENV:-.venv}"
# The real node: containerd, runc and the CNI plugins; iptables and conntrack for kube-proxy; mmdebstrap
# for the images' root filesystems; gcc and libc6-dev for the static pause binary.
# mosquitto brings the broker's system user (the tests run the shipped release from its private folder).
PACKAGES=(mosquitto mosquitto-clients postgresql iproute2 containerd runc containernetworking-plugins iptables conntrack
  mmdebstrap gcc libc6-dev)
if [[ $(id -u) -ne 0 ]]; then SUDO=sudo; else SUDO=; fi

# The virtual environment with iotenant, its test dependencies and the test bed, made again when a pyproject.toml changes.
install_python_env() {
  local stamp
  stamp="$VENV/.installed-$(cat pyproject.toml testbed/pyproject.toml | sha256sum | cut -c1-16)"
  if [[ ! -f "$stamp" ]]; then
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    # The product and its test dependencies, and the local test bed (`iotenant dev ...`), which the image does not carry.
    "$VENV/bin/python" -m pip install -q -e '.[test]' -e ./testbed
    rm -f "$VENV"/.installed-*
    touch "$stamp"
  fi
}

# Debian packages not installed yet, installed with apt-get (through sudo unless run as root).
install_packages() {
  local missing=() package
  for package in "$@"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
  done
  if ((${#missing[@]})); then
    echo "installing Debian packages: ${missing[*]}" >&2
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

# --python-only: just the virtual environment (the unit tier needs no service).
if [[ "${1:-}" == "--python-only" ]]; then
  install_packages python3-venv
  install_python_env
  exit 0
fi

install_packages python3-venv "${PACKAGES[@]}"

command -v go >/dev/null || { echo "Go 1.26 or newer is required on PATH to build the local control plane" >&2; exit 1; }

install_python_env

# Builds etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, kubelet, kube-proxy, kwok,
# kwokctl, prometheus, promtool, CoreDNS, helm and actionlint once per pin and machine (a few minutes cold),
# and unpacks the shipped Mosquitto; prints the folders they are in.
"$VENV/bin/iotenant" dev build
