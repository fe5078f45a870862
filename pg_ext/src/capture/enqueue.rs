//! Every write to `redis.outbox`: row changes (the capture trigger), rows read by a backfill
//! or leaving a synced table (sync_table, partition DDL), table-wide events (purge, sweep) and
//! Redis commands (`redis.on_commit`, mapping changes). Callers choose whose rights the INSERT
//! runs with (the extension's owner) and wake the worker; this module only writes the rows.

use pg_redis_shared::{Op, OutboxOp};
use pgrx::datum::DatumWithOid;
use pgrx::pg_sys::panic::ErrorReportable;
use pgrx::prelude::*;
use pgrx::spi::{OwnedPreparedStatement, SpiClient};
use std::cell::RefCell;

const ROW_SQL: &str =
    "INSERT INTO redis.outbox (mapping_id, op, old_row, new_row) VALUES ($1, $2::pg_catalog.\"char\", $3, $4)";

thread_local! {
    /// The trigger's INSERT, planned once per backend (it runs for every captured row).
    static ROW_PLAN: RefCell<Option<OwnedPreparedStatement>> = const { RefCell::new(None) };
}

/// One row change: `old` and `new` are jsonb datums (or NULL).
pub fn row_change(mapping_id: i64, op: OutboxOp, old: DatumWithOid, new: DatumWithOid) {
    let args = [mapping_id.into(), op.code().to_string().into(), old, new];
    Spi::connect_mut(|client| {
        ROW_PLAN.with_borrow_mut(|plan| {
            if plan.is_none() {
                let p = client
                    .prepare_mut(
                        ROW_SQL,
                        &[
                            pg_sys::INT8OID.into(),
                            pg_sys::TEXTOID.into(),
                            pg_sys::JSONBOID.into(),
                            pg_sys::JSONBOID.into(),
                        ],
                    )
                    .unwrap_or_report();
                *plan = Some(p.keep());
            }
            if let Some(p) = plan.as_ref() {
                client.update(p, None, &args).unwrap_or_report();
            }
        })
    });
}

/// An event about a whole table (a purge or a sweep of its keys): no row.
pub fn table_event(mapping_id: i64, op: OutboxOp) {
    Spi::run_with_args(
        "INSERT INTO redis.outbox (mapping_id, op) VALUES ($1, $2::pg_catalog.\"char\")",
        &[mapping_id.into(), op.code().to_string().into()],
    )
    .unwrap_or_report();
}

/// A Redis command, sent by the worker after the transaction commits.
pub fn command(command: Vec<String>) {
    Spi::run_with_args(
        "INSERT INTO redis.outbox (op, command) VALUES ($1::pg_catalog.\"char\", $2)",
        &[OutboxOp::Command.code().to_string().into(), command.into()],
    )
    .unwrap_or_report();
}

/// Many rows of one table at once, `rows` a jsonb[] datum: reads (the row as `new_row`) or
/// deletes (as `old_row`).
pub fn rows(client: &mut SpiClient, mapping_id: i64, op: Op, rows: DatumWithOid) {
    let column = if op == Op::Delete { "old_row" } else { "new_row" };
    let insert = format!("INSERT INTO redis.outbox (mapping_id, op, {column}) SELECT $1, $3::pg_catalog.\"char\", x FROM pg_catalog.unnest($2::pg_catalog.jsonb[]) AS x");
    client
        .update(insert.as_str(), None, &[mapping_id.into(), rows, OutboxOp::Row(op).code().to_string().into()])
        .unwrap_or_report();
}
