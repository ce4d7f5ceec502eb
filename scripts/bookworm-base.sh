#!/usr/bin/env bash
# A clean Debian 12 root for the package install test and the container image, made offline-able
# and once: `debootstrap --variant=minbase bookworm` from the machine's Debian mirror, trimmed
# the way Docker's bookworm-slim is (no docs, man pages or locales, and dpkg told to skip them),
# packed to build/bookworm/minbase.tar and imported into buildah's local storage as
# docker.io/library/debian:bookworm-slim, the Dockerfile's FROM (builds use --pull-never). Later
# calls reuse the tarball and the image. Needs root.
#
#   scripts/bookworm-base.sh [BUILD_DIR]    (default build)   prints the image name
set -euo pipefail
cd "$(dirname "$0")/.."
BDIR=$(realpath -m "${1:-build}")
CACHE="$BDIR/bookworm"
TAR="$CACHE/minbase.tar"
IMAGE=docker.io/library/debian:bookworm-slim
MIRROR=${ALIGW_DEBIAN_MIRROR:-}
if [ -z "$MIRROR" ]; then
  # The mirror apt already uses on this machine (deb822 or one-line sources).
  MIRROR=$(sed -n 's/^URIs: *\([^ ]*debian\/\?\)$/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null \
    | head -1)
  [ -n "$MIRROR" ] || MIRROR=$(awk '$1=="deb" && $3=="bookworm" {print $2; exit}' \
    /etc/apt/sources.list 2>/dev/null || true)
  [ -n "$MIRROR" ] || MIRROR=http://deb.debian.org/debian
fi

if [ ! -s "$TAR" ]; then
  mkdir -p "$CACHE"
  root="$CACHE/root"
  rm -rf "$root"
  echo "bookworm-base: debootstrap --variant=minbase bookworm from $MIRROR" >&2
  # The packages apt already fetched on this machine (scripts/deps.sh) are offered to debootstrap
  # (it checks each against the mirror's checksums): most of minbase is then not downloaded.
  mkdir -p "$CACHE/debs"
  cp -l /var/cache/apt/archives/*.deb "$CACHE/debs/" 2>/dev/null ||
    cp /var/cache/apt/archives/*.deb "$CACHE/debs/" 2>/dev/null || true
  debootstrap --variant=minbase --cache-dir="$CACHE/debs" bookworm "$root" "$MIRROR" \
    >"$CACHE/debootstrap.log" 2>&1 || {
    tail -20 "$CACHE/debootstrap.log" >&2
    exit 1
  }
  # As in bookworm-slim: dpkg installs no docs, man pages or translations from now on.
  cat >"$root/etc/dpkg/dpkg.cfg.d/docker" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
CFG
  echo 'APT::Install-Recommends "false";' >"$root/etc/apt/apt.conf.d/docker-no-recommends"
  find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  rm -rf "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/*
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  rm -rf "$CACHE/debs"
  printf 'deb %s bookworm main\n' "$MIRROR" >"$root/etc/apt/sources.list"
  tar --numeric-owner --xattrs -C "$root" -cf "$TAR.tmp" .
  mv "$TAR.tmp" "$TAR"
  rm -rf "$root"
fi

if ! buildah inspect --type image "$IMAGE" >/dev/null 2>&1; then
  ctr=$(buildah from --pull-never scratch)
  buildah add --quiet "$ctr" "$TAR" / >/dev/null
  buildah config --cmd bash --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    "$ctr"
  buildah commit --quiet --rm "$ctr" "$IMAGE" >/dev/null
fi
echo "$IMAGE"
