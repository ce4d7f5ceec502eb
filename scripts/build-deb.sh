#!/usr/bin/env bash
# Builds the Debian packages (debian/, dpkg-buildpackage + debhelper) from the files of this
# checkout (tracked and new, not ignored) into build/deb/: aligw_<version>_<arch>.deb and
# aligw-dev_<version>_all.deb. The tree is copied first because dpkg-buildpackage writes its
# results next to the source folder and its work files inside it.
#
#   scripts/build-deb.sh [OUT_DIR]    (default build/deb)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=$(realpath -m "${1:-build/deb}")
VERSION=$(dpkg-parsechangelog -S Version)
SRC="$OUT/src/aligw-$VERSION"
rm -rf "$OUT/src"
mkdir -p "$SRC"
git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
  [ -e "$f" ] || [ -L "$f" ] && printf '%s\0' "$f"
done | tar --null -T - -cf - | tar -xf - -C "$SRC"
rm -f "$OUT"/aligw*.deb "$OUT"/aligw*.changes "$OUT"/aligw*.buildinfo
(cd "$SRC" && DEB_BUILD_OPTIONS="parallel=$(nproc) ${DEB_BUILD_OPTIONS:-}" \
  dpkg-buildpackage -b -us -uc >"$OUT/build.log" 2>&1) || {
  tail -40 "$OUT/build.log" >&2
  echo "build-deb.sh: dpkg-buildpackage failed (log: $OUT/build.log)" >&2
  exit 1
}
mv "$OUT"/src/aligw*.deb "$OUT"/src/aligw*.changes "$OUT"/src/aligw*.buildinfo "$OUT"/
rm -rf "$OUT/src"
ls "$OUT"/aligw*.deb
