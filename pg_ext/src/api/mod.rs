//! The SQL surface, all in schema `redis` (the extension's schema).

mod direct;
mod on_commit;
pub(crate) mod privileges;
mod status;
pub(crate) mod sync;

use pgrx::prelude::*;

extension_sql_file!("../../../sql/pg_redis_objects.sql", name = "catalog", bootstrap);

extension_sql!(
    r#"
CREATE VIEW redis.status AS
WITH queued AS (
    SELECT coalesce(m.table_name::oid::text, 'commands') AS scope, count(*) AS queued, min(o.captured_at) AS oldest
      FROM redis.outbox o LEFT JOIN redis.mapping m ON m.id = o.mapping_id
     GROUP BY 1
), scopes AS (
    SELECT table_name::oid::text AS scope, table_name FROM redis.tables
    UNION SELECT scope, table_name FROM redis.delivery
    UNION SELECT scope, NULL FROM queued
), slot AS (
    -- The replication slot under WAL capture: how much WAL it keeps PostgreSQL from removing
    -- (it grows while Redis is away) and PostgreSQL's word on it ('lost': invalidated).
    SELECT CASE WHEN pg_catalog.pg_is_in_recovery() THEN NULL
                ELSE pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), r.restart_lsn)::int8 END AS retained,
           r.wal_status
      FROM pg_catalog.pg_replication_slots r
     WHERE r.slot_name = 'pg_redis_' || (SELECT d.oid FROM pg_catalog.pg_database d WHERE d.datname = pg_catalog.current_database())
)
SELECT s.table_name,
       coalesce(q.queued, 0) AS queued,
       coalesce(d.delivered, 0) AS delivered,
       clock_timestamp() - q.oldest AS lag,
       d.last_delivered_at,
       d.last_error,
       d.last_error_at,
       w.pid AS worker_pid,
       w.state AS worker_state,
       t.capture,
       slot.retained AS wal_retained_bytes,
       slot.wal_status AS slot_wal_status,
       b.rows_done AS backfilled_rows,
       b.rows_about AS backfill_rows_about,
       b.last_error AS backfill_error
  FROM (SELECT DISTINCT ON (scope) scope, table_name FROM scopes ORDER BY scope, table_name NULLS LAST) s
  LEFT JOIN queued q USING (scope)
  LEFT JOIN redis.delivery d USING (scope)
  LEFT JOIN redis.tables t ON t.table_name::oid::text = s.scope
  LEFT JOIN slot ON true
  LEFT JOIN redis.backfill b ON b.table_oid::text = s.scope
 CROSS JOIN redis.worker_status() w
 ORDER BY s.table_name NULLS LAST;

-- Nothing here is for PUBLIC: an administrator grants what each role needs (see README).
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA redis FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA redis FROM PUBLIC;

SELECT redis._start_worker();
"#,
    name = "finish",
    finalize
);
