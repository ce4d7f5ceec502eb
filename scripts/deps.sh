#!/usr/bin/env bash
# Installs the Debian 12 packages aligw needs. Idempotent.
#   scripts/deps.sh           build and test (the README's test command)
#   scripts/deps.sh --build   only what compiling aligwd needs (the Dockerfile's build stage)
#   scripts/deps.sh --ops     also the packaging and container tools (scripts/test-package.sh,
#                             scripts/test-container.sh): debhelper, lintian, debootstrap, buildah
set -euo pipefail
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
BUILD=(
  build-essential cmake pkg-config
  libuv1-dev libpaho-mqtt-dev libssl-dev libsqlite3-dev libjansson-dev libsystemd-dev
  libcurl4-openssl-dev libmodbus-dev libmicrohttpd-dev
)
TEST=(
  clang clang-format libclang-rt-14-dev
  mosquitto mosquitto-dev libmosquitto-dev mosquitto-clients
  python3 python3-paho-mqtt python3-prometheus-client tmux util-linux
  openssl sqlite3 systemd ca-certificates procps
  iproute2 # test_network: addresses in the test's own network namespace
  curl # bench/ota: the peer it downloads the same firmware with
)
OPS=(debhelper dpkg-dev lintian debootstrap buildah)
case "${1:-}" in
  --build) PKGS=("${BUILD[@]}") ;;
  --ops) PKGS=("${BUILD[@]}" "${TEST[@]}" "${OPS[@]}") ;;
  "") PKGS=("${BUILD[@]}" "${TEST[@]}") ;;
  *) echo "deps.sh: unknown option $1" >&2; exit 2 ;;
esac
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
