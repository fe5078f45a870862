//! DDL following: statements on synced tables that change which rows or which column names a
//! mapping covers, seen by the utility hook (it sees the statement itself, runs as the user
//! who issued it, and runs in every replication role, where event triggers do not).
//!
//! - Partitions joining (CREATE TABLE ... PARTITION OF, ATTACH PARTITION) and leaving (DETACH
//!   PARTITION, DROP TABLE of a partition): `partitions`.
//! - RENAME COLUMN of a column the mapping names: `renames`.
//!
//! Everything is queued in the statement's own transaction, so a rolled-back DDL leaves
//! nothing behind.

pub mod partitions;
pub mod renames;

use pgrx::prelude::*;
use std::ffi::CStr;

/// A relation named by a statement (resolved after the statement ran, when it may only then
/// exist, or exist under another shape).
#[derive(Debug, Clone)]
pub struct RelName {
    schema: Option<String>,
    name: String,
}

impl RelName {
    /// As messages name it.
    pub fn display(&self) -> String {
        match &self.schema {
            Some(s) => format!("{s}.{}", self.name),
            None => self.name.clone(),
        }
    }

    /// # Safety
    /// `rv` is a valid RangeVar or null.
    unsafe fn from_range_var(rv: *const pg_sys::RangeVar) -> Option<RelName> {
        // SAFETY: see the function's contract.
        unsafe {
            if rv.is_null() || (*rv).relname.is_null() {
                return None;
            }
            let schema =
                (!(*rv).schemaname.is_null()).then(|| CStr::from_ptr((*rv).schemaname).to_string_lossy().into_owned());
            Some(RelName { schema, name: CStr::from_ptr((*rv).relname).to_string_lossy().into_owned() })
        }
    }

    /// The relation's oid as the statement's search_path finds it now, if it exists.
    fn resolve(&self) -> Option<pg_sys::Oid> {
        let schema = self.schema.as_ref().and_then(|s| std::ffi::CString::new(s.as_str()).ok());
        let name = std::ffi::CString::new(self.name.as_str()).ok()?;
        // SAFETY: makeRangeVar copies nothing it is given until used; both strings outlive the
        // lookup, which takes no lock and reports a missing relation as InvalidOid.
        let oid = unsafe {
            let rv = pg_sys::makeRangeVar(
                schema.as_ref().map_or(std::ptr::null_mut(), |s| s.as_ptr().cast_mut()),
                name.as_ptr().cast_mut(),
                -1,
            );
            pg_sys::RangeVarGetRelidExtended(
                rv,
                pg_sys::NoLock as i32,
                pg_sys::RVROption::RVR_MISSING_OK,
                None,
                std::ptr::null_mut(),
            )
        };
        (oid != pg_sys::InvalidOid).then_some(oid)
    }
}

/// What a statement leaves to do once it ran.
#[derive(Debug)]
pub enum Followup {
    /// A partition was created (`backfill` false) or attached (`backfill` true).
    PartitionAdded { partition: RelName, backfill: bool },
    /// A partition was detached from `parent` (`concurrent`: in two transactions, writers
    /// of the partition may still be running).
    PartitionDetached { parent: RelName, partition: RelName, concurrent: bool },
    /// A column was renamed.
    ColumnRenamed { table: RelName, old: String, new: String },
}

/// Whether this database has the extension (the hook runs in every database).
fn extension_here() -> bool {
    // SAFETY: a syscache lookup, inside the statement's transaction.
    unsafe { !pg_sys::IsBinaryUpgrade && pg_sys::get_extension_oid(c"pg_redis".as_ptr(), true) != pg_sys::InvalidOid }
}

/// Looks at a statement before it runs: acts on what must be read before (the rows of a
/// partition about to be dropped) and says what to do after.
///
/// # Safety
/// `pstmt` is the valid planned statement of the current utility call.
pub unsafe fn before(pstmt: *mut pg_sys::PlannedStmt) -> Vec<Followup> {
    // SAFETY: see the function's contract.
    unsafe {
        let node = (*pstmt).utilityStmt;
        if node.is_null() {
            return Vec::new();
        }
        let tag = (*node).type_;
        let relevant = matches!(
            tag,
            pg_sys::NodeTag::T_DropStmt
                | pg_sys::NodeTag::T_AlterTableStmt
                | pg_sys::NodeTag::T_CreateStmt
                | pg_sys::NodeTag::T_RenameStmt
        );
        if !relevant || !extension_here() {
            return Vec::new();
        }
        match tag {
            pg_sys::NodeTag::T_DropStmt => {
                let stmt = node as *mut pg_sys::DropStmt;
                if (*stmt).removeType == pg_sys::ObjectType::OBJECT_TABLE {
                    let names: Vec<RelName> = list_ptrs((*stmt).objects)
                        .into_iter()
                        .filter_map(|names| RelName::from_range_var(pg_sys::makeRangeVarFromNameList(names.cast())))
                        .collect();
                    partitions::before_drop(&names);
                }
                Vec::new()
            }
            pg_sys::NodeTag::T_CreateStmt => {
                let stmt = node as *mut pg_sys::CreateStmt;
                match (*stmt).partbound.is_null() {
                    true => Vec::new(),
                    false => RelName::from_range_var((*stmt).relation)
                        .map(|partition| Followup::PartitionAdded { partition, backfill: false })
                        .into_iter()
                        .collect(),
                }
            }
            pg_sys::NodeTag::T_AlterTableStmt => {
                let stmt = node as *mut pg_sys::AlterTableStmt;
                let Some(parent) = RelName::from_range_var((*stmt).relation) else { return Vec::new() };
                let mut out = Vec::new();
                for cmd in list_ptrs((*stmt).cmds) {
                    let cmd = cmd as *mut pg_sys::AlterTableCmd;
                    let sub = (*cmd).subtype;
                    let is_partition_cmd = matches!(
                        sub,
                        pg_sys::AlterTableType::AT_AttachPartition
                            | pg_sys::AlterTableType::AT_DetachPartition
                            | pg_sys::AlterTableType::AT_DetachPartitionFinalize
                    );
                    if !is_partition_cmd || (*cmd).def.is_null() {
                        continue;
                    }
                    let pc = (*cmd).def as *mut pg_sys::PartitionCmd;
                    let Some(partition) = RelName::from_range_var((*pc).name) else { continue };
                    out.push(match sub {
                        pg_sys::AlterTableType::AT_AttachPartition => {
                            Followup::PartitionAdded { partition, backfill: true }
                        }
                        _ => Followup::PartitionDetached {
                            parent: parent.clone(),
                            partition,
                            concurrent: (*pc).concurrent,
                        },
                    });
                }
                out
            }
            pg_sys::NodeTag::T_RenameStmt => {
                let stmt = node as *mut pg_sys::RenameStmt;
                if (*stmt).renameType != pg_sys::ObjectType::OBJECT_COLUMN
                    || (*stmt).relationType != pg_sys::ObjectType::OBJECT_TABLE
                    || (*stmt).subname.is_null()
                    || (*stmt).newname.is_null()
                {
                    return Vec::new();
                }
                let Some(table) = RelName::from_range_var((*stmt).relation) else { return Vec::new() };
                let old = CStr::from_ptr((*stmt).subname).to_string_lossy().into_owned();
                let new = CStr::from_ptr((*stmt).newname).to_string_lossy().into_owned();
                vec![Followup::ColumnRenamed { table, old, new }]
            }
            _ => Vec::new(),
        }
    }
}

/// Does what the statement left to do, in its transaction (it succeeded).
pub fn after(followups: Vec<Followup>) {
    for f in followups {
        match f {
            Followup::PartitionAdded { partition, backfill } => partitions::after_add(&partition, backfill),
            Followup::PartitionDetached { parent, partition, concurrent } => {
                partitions::after_detach(&parent, &partition, concurrent)
            }
            Followup::ColumnRenamed { table, old, new } => renames::after_rename(&table, &old, &new),
        }
    }
}

/// The pointers of a List (empty for NIL).
///
/// # Safety
/// `list` is a valid pointer List or null.
unsafe fn list_ptrs(list: *mut pg_sys::List) -> Vec<*mut std::ffi::c_void> {
    if list.is_null() {
        return Vec::new();
    }
    // SAFETY: see the function's contract.
    unsafe { (0..(*list).length as usize).map(|i| (*(*list).elements.add(i)).ptr_value).collect() }
}
