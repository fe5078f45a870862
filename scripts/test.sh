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

# The pg_regress files (pg_ext/tests/pg_regress: the text of redis.tables, redis.status and the
# refusals) against the installed build, in a throwaway cluster whose Redis URL refuses at once.
# Not through `cargo pgrx regress` as root: it starts its server with pg_ctl, which refuses
# root, and its --runas reaches only createdb. So as root the server, psql and pg_regress run
# as the postgres user; otherwise `cargo pgrx regress` runs them (and builds and installs).
# The server runs without RUST_BACKTRACE: with it, errors carry a backtrace in their detail.
regress_conf=(shared_preload_libraries=pg_redis pg_redis.url=redis://127.0.0.1:1)
pg_regress_tier() {
  local v=$1 cfg bindir dir names
  if [ "$(id -u)" != 0 ]; then
    env -u RUST_BACKTRACE -u RUST_LIB_BACKTRACE cargo pgrx regress "pg$v" --release --package pg_redis --resetdb ${regress_conf[@]/#/--postgresql-conf=}
    return
  fi
  cfg=$(pg_config_of "$v")
  bindir=$("$cfg" --bindir)
  dir="$rundir/pg-regress-$v"
  as_postgres() { (cd "$dir" && runuser -u postgres -- "$@"); }
  if [ -f "$dir/data/postmaster.pid" ]; then as_postgres "$bindir/pg_ctl" stop -D "$dir/data" -m immediate >/dev/null || true; fi
  rm -rf "$dir" && mkdir -p "$dir" && chown postgres: "$dir"
  as_postgres "$bindir/initdb" -D "$dir/data" -A trust --no-sync >/dev/null
  as_postgres env -u RUST_BACKTRACE -u RUST_LIB_BACKTRACE "$bindir/pg_ctl" start -w -D "$dir/data" -l "$dir/server.log" \
    -o "-c listen_addresses='' -c unix_socket_directories='$dir' ${regress_conf[*]/#/-c }" >/dev/null
  as_postgres "$bindir/createdb" -h "$dir" pg_redis_regress
  names=(setup $(cd pg_ext/tests/pg_regress/sql && ls *.sql | sed 's/\.sql$//' | grep -vx setup))
  local rc=0
  as_postgres "$("$cfg" --pkglibdir)/pgxs/src/test/regress/pg_regress" --bindir="$bindir" --host="$dir" \
    --use-existing --dbname=pg_redis_regress --inputdir="$PWD/pg_ext/tests/pg_regress" --outputdir="$dir" \
    "${names[@]}" || rc=$?
  as_postgres "$bindir/pg_ctl" stop -D "$dir/data" -m fast >/dev/null
  [ "$rc" = 0 ] || { cat "$dir/regression.diffs" 2>/dev/null; return "$rc"; }
}

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

  step "PostgreSQL $v: pg_regress tests of the user-visible text (views, refusals) against the installed build"
  pg_regress_tier "$v"

  step "PostgreSQL $v: end-to-end tests against real PostgreSQL and redis-server"
  PG=$v PG_CONFIG=$(pg_config_of "$v") cargo test --release --no-fail-fast -p pg_redis_tests -- --test-threads=2

  step "PostgreSQL $v: the sync tests again under WAL capture (wal_level = logical)"
  PG_REDIS_CAPTURE=wal PG=$v PG_CONFIG=$(pg_config_of "$v") cargo test --release --no-fail-fast -p pg_redis_tests \
    --test sync --test consistency --test ddl_following --test bad_inputs --test read_through --test privileges \
    --test sql_functions --test chaos -- --test-threads=2
  printf '\n\033[1mPostgreSQL %s: every tier passed in %ss.\033[0m\n' "$v" $((SECONDS - t_version))
done

printf '\n\033[1mAll test tiers passed in %ss.\033[0m\n' $((SECONDS - t_all))
