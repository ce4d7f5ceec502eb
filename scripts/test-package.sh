#!/usr/bin/env bash
# The Debian package, built and installed as an operator would:
#   1. scripts/build-deb.sh (dpkg-buildpackage + debhelper) builds aligw_<version>_<arch>.deb
#      and aligw-dev_<version>_all.deb;
#   2. lintian runs on them; errors fail the test, warnings are printed (the note lists them);
#   3. in a clean Debian 12 root (debootstrap --variant=minbase, cached by
#      scripts/bookworm-base.sh and shared with the container test), run through
#      `buildah run --isolation chroot`: `apt-get install ./aligw_*.deb` resolves the
#      dependencies from the mirror, the aligw user exists, nothing is enabled without a config,
#      `aligwd --check-config` passes on the shipped example, and the installed aligwd, run as
#      the aligw user against the local hub on the host, brings its devices online.
# Needs root. Part of .ci/run.
#
#   scripts/test-package.sh [BUILD_DIR]    (default build; aligwctl and the hub plugin from it)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
BDIR=$(realpath -m "${1:-build}")
T0=$(date +%s)
step() { echo "== [$(($(date +%s) - T0)) s] $*"; }

scripts/deps.sh --ops
if [ ! -x "$BDIR/daemon/aligwctl" ] || ! find "$BDIR" -name aligw_hub.so | grep -q .; then
  cmake -S . -B "$BDIR" -DALIGW_WERROR=ON >/dev/null
  cmake --build "$BDIR" -j"$(nproc)" --target aligwctl aligw_hub >/dev/null
fi
HUB_PLUGIN=$(find "$BDIR" -name aligw_hub.so | head -n 1)
source scripts/ops-common.sh

step "dpkg-buildpackage"
scripts/build-deb.sh "$BDIR/deb"
DEB=$(ls "$BDIR"/deb/aligw_*_*.deb | head -1)
DEV=$(ls "$BDIR"/deb/aligw-dev_*_all.deb | head -1)
dpkg-deb -I "$DEB" | sed -n '/Depends/p'

step "lintian"
lintian --fail-on error --tag-display-limit 0 "$BDIR"/deb/aligw_*.changes \
  | tee "$BDIR/deb/lintian.txt"
echo "lintian: $(grep -c '^E:' "$BDIR/deb/lintian.txt" || true) errors," \
  "$(grep -c '^W:' "$BDIR/deb/lintian.txt" || true) warnings"

step "clean Debian 12 root"
BASE=$(scripts/bookworm-base.sh "$BDIR")
W=$(mktemp -d /tmp/aligw-deb.XXXXXX)
CTR=""
cleanup() {
  set +e
  [ -f "$W/run/daemon.pid" ] && kill -TERM "$(cat "$W/run/daemon.pid")" 2>/dev/null
  [ -n "${RUNPID:-}" ] && wait "$RUNPID" 2>/dev/null
  [ -n "${SUBPID:-}" ] && kill "$SUBPID" 2>/dev/null
  [ -n "$CTR" ] && buildah rm "$CTR" >/dev/null 2>&1
  hub_stop
  rm -rf "$W"
}
trap cleanup EXIT
CTR=$(buildah from --pull-never "$BASE")
mkdir -p "$W/debs"
cp "$DEB" "$DEV" "$W/debs/"
RUN=(buildah run --isolation chroot)

step "apt-get install ./$(basename "$DEB")"
# The host's apt cache is the root's package cache: .debs the host already fetched (same
# mirror) are not downloaded again. Resolution uses the root's own freshly updated lists.
"${RUN[@]}" -v "$W/debs:/debs:ro" -v /var/cache/apt/archives:/var/cache/apt/archives "$CTR" -- sh -c '
  set -e
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  cd /debs && apt-get install -y -q ./'"$(basename "$DEB")"' ./'"$(basename "$DEV")"' \
    | grep -E "^(Setting up|The following NEW)" | head -60
  dpkg -s aligw | sed -n "/^Version/p;/^Status/p"
  id aligw
  test -f /usr/include/aligw/plugin.h
  test ! -e /etc/systemd/system/multi-user.target.wants/aligwd.service
  test ! -e /etc/aligw/aligw.json
  echo "nothing enabled, no config installed"
  aligwd --check-config -c /usr/share/aligw/aligw.example.json
'

step "the installed aligwd against the hub"
UIDGID=$("${RUN[@]}" "$CTR" -- sh -c 'echo $(id -u aligw):$(id -g aligw)')
hub_start 3
write_config "$W/etc" 1 3
mkdir -p "$W/state" "$W/run"
chown "$UIDGID" "$W/state" "$W/run"
chmod 0644 "$W/etc"/*
"${RUN[@]}" --user aligw -v "$W/etc:/etc/aligw:ro" -v "$W/state:/var/lib/aligw" \
  -v "$W/run:/run/aligw" "$CTR" -- \
  sh -c 'echo $$ > /run/aligw/daemon.pid; aligwd --check-config -c /etc/aligw/aligw.json &&
         exec aligwd -c /etc/aligw/aligw.json' >"$W/aligwd.log" 2>&1 &
RUNPID=$!
wait_online "$W/run/aligw.sock" 3 30 || { cat "$W/aligwd.log" >&2; exit 1; }
step "a property post from the simulator in the installed aligw-plugin-host"
K1=$(device_key 1)
hub_subscribe "/sys/${K1}/thing/event/property/post" "$W/got"
wait "$SUBPID" || true
SUBPID=""
grep -q '"params"' "$W/got" || { echo "FAIL: no property post from the simulator reached the hub" >&2; cat "$W/aligwd.log" >&2; exit 1; }
echo "hub received: $(head -c 200 "$W/got")"
"$BDIR/daemon/aligwctl" -s "$W/run/aligw.sock" status
kill -TERM "$(cat "$W/run/daemon.pid")"
wait "$RUNPID"
RUNPID=""
step "package test passed"
