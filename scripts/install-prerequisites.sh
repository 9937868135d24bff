#!/usr/bin/env bash
# Installs what iotenant's tests and local demo need on a fresh Debian machine, and nothing twice:
# Debian's mosquitto and postgresql, a Python virtual environment with
# iotenant and its test dependencies, and the pinned control-plane binaries (built from Go modules).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${VENV:-.venv}"
# The real node: containerd, runc and the CNI plugins; iptables and conntrack for kube-proxy; mmdebstrap
# for the images' root filesystems; gcc and libc6-dev for the static pause binary.
PACKAGES=(mosquitto mosquitto-clients postgresql iproute2 containerd runc containernetworking-plugins iptables conntrack
  mmdebstrap gcc libc6-dev)
# The broker version the stack ships (settings.py), so that the tests run the broker we ship.
MOSQUITTO_VERSION=$(sed -n 's/^MOSQUITTO_VERSION = "\(.*\)"$/\1/p' operator/iotenant/settings.py)
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

# --python-only: just the virtual environment (the unit tier needs no service).
if [[ "${1:-}" == "--python-only" ]]; then
  install_python_env
  exit 0
fi

# Debian's stable release carries an older Mosquitto than the image; its backports carry the shipped
# one. The backports entry is derived from this machine's own Debian sources (same mirror, same key).
add_backports() {
  local codename sources uris signed
  codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
  [[ -n "$codename" && -f /etc/apt/sources.list.d/debian.sources ]] || return 1
  sources=/etc/apt/sources.list.d/debian.sources
  uris=$(awk -v suite="$codename" 'BEGIN{RS=""} $0 ~ "Suites:[^\n]*(^| )"suite"( |$)" {for(i=1;i<=NF;i++) if($i=="URIs:") {print $(i+1); exit}}' "$sources")
  signed=$(awk -v suite="$codename" 'BEGIN{RS=""} $0 ~ "Suites:[^\n]*(^| )"suite"( |$)" {for(i=1;i<=NF;i++) if($i=="Signed-By:") {print $(i+1); exit}}' "$sources")
  [[ -n "$uris" ]] || return 1
  printf 'Types: deb\nURIs: %s\nSuites: %s-backports\nComponents: main\n%s\n' "$uris" "$codename" \
    "${signed:+Signed-By: $signed}" | $SUDO tee /etc/apt/sources.list.d/iotenant-backports.sources >/dev/null
  echo "$codename-backports"
}

installed_mosquitto() { dpkg-query -W -f='${Version}' mosquitto 2>/dev/null | sed 's/-.*//'; }
if [[ "$(installed_mosquitto)" != "$MOSQUITTO_VERSION" ]]; then
  if suite=$(add_backports); then
    echo "installing Mosquitto $MOSQUITTO_VERSION from $suite" >&2
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends -t "$suite" \
      "mosquitto=$MOSQUITTO_VERSION-*" "mosquitto-clients=$MOSQUITTO_VERSION-*" >/dev/null
  fi
  [[ "$(installed_mosquitto)" == "$MOSQUITTO_VERSION" ]] || echo "warning: Mosquitto $(installed_mosquitto) is installed, the stack ships $MOSQUITTO_VERSION; the tests will say so" >&2
fi

missing=()
for package in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if ((${#missing[@]})); then
  echo "installing Debian packages: ${missing[*]}" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

command -v go >/dev/null || { echo "Go 1.26 or newer is required on PATH to build the local control plane" >&2; exit 1; }

install_python_env

# Builds etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, kubelet, kube-proxy, kwok,
# kwokctl, prometheus, promtool, CoreDNS, helm and actionlint
# once per pin and machine (a few minutes cold); prints the folder they are in.
"$VENV/bin/iotenant" dev build
