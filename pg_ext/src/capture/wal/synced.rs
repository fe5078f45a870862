//! Which mapping a decoded relation's changes belong to. `redis.mapping` is a user catalog
//! table, so decoding reads it under the historic snapshot of each change: the mapping version
//! in force when the change was made, as the trigger names the version in force when it fired.
//!
//! Answers are cached per relation for one decoding session. A change to `redis.mapping` itself
//! (sync_table, unsync_table, a resync) forgets them all, and so does any relation cache
//! invalidation decoding replays (a partition attached or detached, a replica identity
//! changed, the extension dropped): the changes after it, in commit order, are classified anew.

use crate::capture::mode::Capture;
use crate::capture::watch::Watch;
use pgrx::prelude::*;
use std::cell::Cell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Set by the relation cache invalidation callback: the cached answers may be out of date.
static STALE: AtomicBool = AtomicBool::new(false);

thread_local! {
    /// Callbacks cannot be unregistered: one per process, for every decoding session in it.
    static CALLBACK_REGISTERED: Cell<bool> = const { Cell::new(false) };
}

#[pg_guard]
unsafe extern "C-unwind" fn relation_invalidated(_arg: pg_sys::Datum, _relid: pg_sys::Oid) {
    // Only a flag: this runs inside cache lookups, possibly in the middle of a classification.
    STALE.store(true, Ordering::Relaxed);
}

/// A synced relation, as decoding needs it.
pub struct SyncedRelation {
    pub watch: Watch,
    /// What its replica identity logs.
    pub identity: Identity,
    /// Whether a column has a type defined in the database: its cast to json or its output
    /// function is user code, which may raise an ERROR (decoding it is then guarded).
    pub user_types: bool,
}

/// What the replica identity of a synced relation logs of the old row of an UPDATE or DELETE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Identity {
    /// The whole old row (`REPLICA IDENTITY FULL`), on every UPDATE and DELETE.
    Full,
    /// The identity's columns, which hold every key column: logged on every DELETE, and on an
    /// UPDATE whenever one of them changed (so a key never changes unseen).
    CoversKey,
    /// Columns that do not hold the key, or none at all: a key may change unseen.
    Partial,
}

/// What a decoded relation is to pg_redis.
#[derive(Clone)]
pub enum Relation {
    /// `redis.mapping`: its changes change the answers.
    MappingCatalog,
    /// `redis.outbox`: its rows are events, decoded in their place among the changes.
    Outbox,
    /// Synced (itself, or the partitioned table it is a partition of).
    Synced(Rc<SyncedRelation>),
    NotSynced,
}

pub struct Relations {
    known: HashMap<u32, Relation>,
}

impl Relations {
    pub fn new() -> Relations {
        if !CALLBACK_REGISTERED.get() {
            // SAFETY: registering a static function once per process, as extensions do.
            unsafe { pg_sys::CacheRegisterRelcacheCallback(Some(relation_invalidated), pg_sys::Datum::from(0usize)) };
            CALLBACK_REGISTERED.set(true);
        }
        Relations { known: HashMap::new() }
    }

    /// What `rel` (a relation handed to a decoding callback) is.
    ///
    /// # Safety
    /// `rel` is open, and the historic snapshot of the change being decoded is in force.
    pub unsafe fn classify(&mut self, rel: pg_sys::Relation) -> Relation {
        // SAFETY: see the function's contract.
        let (relid, is_partition) = unsafe { ((*rel).rd_id, (*(*rel).rd_rel).relispartition) };
        if STALE.swap(false, Ordering::Relaxed) {
            self.known.clear();
        }
        if let Some(r) = self.known.get(&relid.to_u32()) {
            return r.clone();
        }
        let r = match mapping_catalog() {
            None => Relation::NotSynced,
            Some(catalog) if catalog == relid => Relation::MappingCatalog,
            Some(_) if crate::pg::catalog::relation_oid(c"redis", c"outbox") == Some(relid) => Relation::Outbox,
            Some(catalog) => {
                let mut candidates = vec![relid];
                if is_partition {
                    candidates.extend(ancestors(relid));
                }
                // SAFETY: a catalog scan under the historic snapshot (the contract).
                let watch = candidates.into_iter().find_map(|table| unsafe { active_mapping(catalog, table) });
                match watch {
                    Some(watch) => {
                        // SAFETY: the open relation (the contract).
                        let (identity, user_types) =
                            unsafe { (identity(rel, &watch.key_columns), has_user_types(rel)) };
                        Relation::Synced(Rc::new(SyncedRelation { watch, identity, user_types }))
                    }
                    None => Relation::NotSynced,
                }
            }
        };
        self.known.insert(relid.to_u32(), r.clone());
        r
    }

    pub fn forget(&mut self) {
        self.known.clear();
    }
}

/// What the replica identity of `rel` (a leaf: the setting does not pass to partitions) logs.
///
/// # Safety
/// `rel` is open.
unsafe fn identity(rel: pg_sys::Relation, key_columns: &[String]) -> Identity {
    // SAFETY: see the function's contract; the bitmap is a fresh copy from the relation cache.
    unsafe {
        match (*(*rel).rd_rel).relreplident as u8 {
            pg_sys::REPLICA_IDENTITY_FULL => Identity::Full,
            pg_sys::REPLICA_IDENTITY_DEFAULT | pg_sys::REPLICA_IDENTITY_INDEX => {
                // The variant made for decoding: no index is opened or locked.
                let logged = pg_sys::RelationGetIdentityKeyBitmap(rel);
                let attrs = crate::pg::compat::attributes((*rel).rd_att);
                let covered = !logged.is_null()
                    && key_columns.iter().all(|k| {
                        attrs
                            .iter()
                            .position(|a| {
                                !a.attisdropped
                                    && std::ffi::CStr::from_ptr(a.attname.data.as_ptr()).to_bytes() == k.as_bytes()
                            })
                            .is_some_and(|i| {
                                pg_sys::bms_is_member(i as i32 + 1 - pg_sys::FirstLowInvalidHeapAttributeNumber, logged)
                            })
                    });
                if covered {
                    Identity::CoversKey
                } else {
                    Identity::Partial
                }
            }
            _ => Identity::Partial,
        }
    }
}

/// Whether a column of `rel` has a type created in the database (not built in).
///
/// # Safety
/// `rel` is open.
unsafe fn has_user_types(rel: pg_sys::Relation) -> bool {
    // SAFETY: see the function's contract.
    let attrs = unsafe { crate::pg::compat::attributes((*rel).rd_att) };
    attrs.iter().any(|a| !a.attisdropped && a.atttypid.to_u32() >= pg_sys::FirstNormalObjectId)
}

/// `redis.mapping`, when the extension existed at the decoded point of history.
fn mapping_catalog() -> Option<pg_sys::Oid> {
    crate::pg::catalog::relation_oid(c"redis", c"mapping")
}

/// The partitioned tables `relid` belongs to, nearest first.
fn ancestors(relid: pg_sys::Oid) -> Vec<pg_sys::Oid> {
    unsafe extern "C-unwind" {
        /// PostgreSQL's `catalog/partition.h`, which pgrx does not bind.
        fn get_partition_ancestors(relid: pg_sys::Oid) -> *mut pg_sys::List;
    }
    // SAFETY: a catalog scan of pg_inherits (allowed while decoding), inside the boundary that
    // turns an ERROR into a Rust panic; the list is read before anything else runs.
    unsafe {
        let list = pg_sys::ffi::pg_guard_ffi_boundary(|| get_partition_ancestors(relid));
        (0..pg_sys::list_length(list)).map(|i| pg_sys::list_nth_oid(list, i)).collect()
    }
}

/// The active mapping of `table` when it is captured from the WAL, read from the catalog
/// `catalog` (`redis.mapping`).
///
/// # Safety
/// The historic snapshot of the change being decoded is in force.
unsafe fn active_mapping(catalog: pg_sys::Oid, table: pg_sys::Oid) -> Option<Watch> {
    // SAFETY: the catalog is opened and closed here; the scan key compares `table_name` (a
    // regclass, stored as an oid) with oideq; every tuple is read before the scan moves on.
    unsafe {
        let rel = pg_sys::table_open(catalog, pg_sys::AccessShareLock as i32);
        let desc = (*rel).rd_att;
        let column = |name: &str| {
            crate::pg::compat::attributes(desc)
                .iter()
                .position(|a| {
                    !a.attisdropped && std::ffi::CStr::from_ptr(a.attname.data.as_ptr()).to_bytes() == name.as_bytes()
                })
                .map(|i| i as i16 + 1)
        };
        let columns =
            ["id", "table_name", "active", "columns", "key_columns", "stream_key", "channel", "capture"].map(column);
        let [Some(id), Some(table_name), Some(active), Some(cols), Some(key_cols), Some(stream), Some(channel), Some(capture)] =
            columns
        else {
            pg_sys::table_close(rel, pg_sys::AccessShareLock as i32);
            return None;
        };
        let mut key = pg_sys::ScanKeyData::default();
        pg_sys::ScanKeyInit(
            &mut key,
            table_name,
            pg_sys::BTEqualStrategyNumber as u16,
            pg_sys::Oid::from(pg_sys::F_OIDEQ),
            pg_sys::Datum::from(table),
        );
        let scan = pg_sys::systable_beginscan(rel, pg_sys::InvalidOid, false, std::ptr::null_mut(), 1, &mut key);
        let mut found = None;
        loop {
            let tuple = pg_sys::systable_getnext(scan);
            if tuple.is_null() {
                break;
            }
            let get = |attnum: i16| {
                let mut isnull = false;
                let d = pg_sys::heap_getattr(tuple, attnum as i32, desc, &mut isnull);
                (d, isnull)
            };
            let (a, a_null) = get(active);
            if a_null || !bool::from_datum(a, false).unwrap_or(false) {
                continue;
            }
            // A version captured by trigger: its changes reach the outbox, decoded as queued rows.
            let (m, m_null) = get(capture);
            if String::from_datum(m, m_null).as_deref() != Some(Capture::Wal.as_str()) {
                continue;
            }
            let (i, i_null) = get(id);
            let (c, c_null) = get(cols);
            let (k, k_null) = get(key_cols);
            found = Some(Watch::new(
                i64::from_datum(i, i_null).unwrap_or_default(),
                Vec::<String>::from_datum(c, c_null),
                Vec::<String>::from_datum(k, k_null).unwrap_or_default(),
                !get(stream).1 || !get(channel).1,
                table,
            ));
        }
        pg_sys::systable_endscan(scan);
        pg_sys::table_close(rel, pg_sys::AccessShareLock as i32);
        found
    }
}
