#!/usr/bin/env bash
# Installs the Debian 12 packages aligw needs to build, test and run. Idempotent.
set -euo pipefail
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
PKGS=(
  build-essential cmake pkg-config clang clang-format libclang-rt-14-dev
  libuv1-dev libpaho-mqtt-dev libssl-dev libsqlite3-dev libjansson-dev libsystemd-dev
  libcurl4-openssl-dev libmodbus-dev
  mosquitto mosquitto-dev libmosquitto-dev mosquitto-clients
  python3 python3-paho-mqtt openssl sqlite3 systemd ca-certificates procps
  curl  # bench/ota: the peer it downloads the same firmware with
)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
