#!/usr/bin/env bash
# Build the infergrid .deb (dh-virtualenv) into dist/.
#
#   bash packaging/build-deb.sh
#
# Needs (Debian/Ubuntu): apt-get install dh-virtualenv debhelper python3-venv python3-dev scdoc
# and network access to PyPI (the virtualenv bundles the Python dependencies).
# dpkg-buildpackage wants ./debian at the top of the source tree, so this builds
# in a temporary copy of the repository (the files git tracks or would track)
# with packaging/debian copied to ./debian; the working tree is not touched.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
out=${DIST_DIR:-$repo/dist}

missing=()
for tool in dpkg-buildpackage dh dh_virtualenv scdoc; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
for f in /usr/bin/python3 /usr/lib/python3*/venv/__init__.py; do
  [ -e "$f" ] || missing+=("$f")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "build-deb: missing ${missing[*]}" >&2
  echo "build-deb: apt-get install dh-virtualenv debhelper python3-venv python3-dev scdoc" >&2
  exit 1
fi

# The package version is the project's version.
pyver=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$repo/pyproject.toml" | head -1)
debver=$(sed -n '1s/^infergrid (\([^)]*\)).*/\1/p' "$repo/packaging/debian/changelog")
if [ "${debver%%-*}" != "$pyver" ]; then
  echo "build-deb: packaging/debian/changelog is at $debver, pyproject.toml at $pyver:" >&2
  echo "build-deb: add a changelog entry for $pyver" >&2
  exit 1
fi

work=$(mktemp -d /tmp/infergrid-deb.XXXXXX)
trap 'rm -rf "$work"' EXIT
src=$work/infergrid-$pyver
mkdir -p "$src"
(cd "$repo" && git ls-files -z --cached --others --exclude-standard) \
  | (cd "$repo" && xargs -0 cp --parents -t "$src" 2>/dev/null || true)
# Files deleted in the working tree but still tracked are skipped above.
rm -rf "$src/debian"
cp -r "$repo/packaging/debian" "$src/debian"

echo "build-deb: building infergrid $debver in $src"
start=$(date +%s)
# Reset PATH: a pyenv/conda python first on PATH would end up in the virtualenv.
(cd "$src" && env -u VIRTUAL_ENV -u PYTHONPATH PATH=/usr/sbin:/usr/bin:/sbin:/bin \
  dpkg-buildpackage -us -uc -b) >"$work/build.log" 2>&1 || {
  tail -60 "$work/build.log" >&2
  echo "build-deb: dpkg-buildpackage failed (log above)" >&2
  exit 1
}

mkdir -p "$out"
for f in "$work"/*.deb "$work"/*.buildinfo "$work"/*.changes; do
  [ -e "$f" ] && mv -f "$f" "$out/"
done
deb=$(ls "$out"/infergrid_"$debver"_*.deb)
echo "build-deb: $deb ($(du -h "$deb" | cut -f1), $(( $(date +%s) - start )) s)"
