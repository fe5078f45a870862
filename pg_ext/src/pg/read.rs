//! Read-only SPI queries. pgrx's `Spi::get_one` and its kin run their query as a write, which
//! gives the transaction an id: PostgreSQL then refuses to create a logical replication slot in
//! it, and every such transaction of the worker would commit a record its own slot decodes.
//! The worker's reads under WAL capture go through these instead.

use pgrx::datum::DatumWithOid;
use pgrx::prelude::*;

/// The first column of the first row (None when there is no row or it is NULL).
pub fn one<A: FromDatum + IntoDatum>(query: &str, args: &[DatumWithOid<'_>]) -> spi::Result<Option<A>> {
    Spi::connect(|c| {
        let table = c.select(query, Some(1), args)?;
        if table.is_empty() {
            return Ok(None);
        }
        table.first().get_one()
    })
}

/// The first two columns of the first row.
pub fn two<A: FromDatum + IntoDatum, B: FromDatum + IntoDatum>(
    query: &str,
    args: &[DatumWithOid<'_>],
) -> spi::Result<(Option<A>, Option<B>)> {
    Spi::connect(|c| {
        let table = c.select(query, Some(1), args)?;
        if table.is_empty() {
            return Ok((None, None));
        }
        table.first().get_two()
    })
}
