#!/usr/bin/env bash
# Every test tier, in order, against PostgreSQL 15 and 18; stops at the first failing tier and
# exits non-zero. Run through `make test`, which first runs scripts/setup.sh.
#   PG_VERSIONS="15"  scripts/test.sh   runs the PostgreSQL tiers against 15 only.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
t_all=$SECONDS
sudo_flag=$( [ "$(id -u)" = 0 ] || echo --sudo )
pg_config_of() { case "$1" in 15) echo /usr/lib/postgresql/15/bin/pg_config ;; *) echo "$(scripts/pg18.sh home)/bin/pg_config" ;; esac; }

step "Unit and property tests: shared vocabulary (keys, encoding, events)"
cargo test --release --quiet -p pg_redis_shared

step "Unit tests: Redis module logic"
cargo test --release --quiet -p redis_pg

for v in ${PG_VERSIONS:-15 18}; do
  t_version=$SECONDS
  step "PostgreSQL $v: #[pg_test] tests inside a throwaway cluster"
  rundir=$(target/release/pg_redis_dev rundir)
  pgrx_data="$rundir/pgrx-test-$v"
  mkdir -p "$pgrx_data"
  if [ "$(id -u)" = 0 ]; then
    chown postgres: "$pgrx_data"
    cargo pgrx test "pg$v" --release --package pg_redis --runas postgres --pgdata "$pgrx_data"
  else
    cargo pgrx test "pg$v" --release --package pg_redis --pgdata "$pgrx_data"
  fi

  step "PostgreSQL $v: reinstalling the release build of the extension (the test build replaced it)"
  cargo pgrx install --release --package pg_redis --no-default-features --features "pg$v" --pg-config "$(pg_config_of "$v")" $sudo_flag >/dev/null

  step "PostgreSQL $v: end-to-end tests against real PostgreSQL and redis-server"
  PG=$v PG_CONFIG=$(pg_config_of "$v") cargo test --release --no-fail-fast -p pg_redis_tests -- --test-threads=2
  printf '\n\033[1mPostgreSQL %s: every tier passed in %ss.\033[0m\n' "$v" $((SECONDS - t_version))
done

printf '\n\033[1mAll test tiers passed in %ss.\033[0m\n' $((SECONDS - t_all))
