//! The vocabulary both halves of pg_redis share: the PostgreSQL extension (`pg_ext`) and the
//! Redis module (`redis_mod`) link this crate, so a row is keyed and encoded the same way
//! whichever side writes it. Plain Rust: no FFI, no server APIs.

pub mod apply;
pub mod backoff;
pub mod command_policy;
pub mod delivery;
pub mod encoding;
pub mod error;
pub mod event;
pub mod key_template;
pub mod key_type;
pub mod mapping;
pub mod redact;
pub mod sql;
pub mod wal;

pub use encoding::Row;
pub use error::{Error, ErrorKind, Result};
pub use event::{ChangeEvent, Op, OutboxOp, Source};
pub use key_template::KeyTemplate;
pub use mapping::{Encoded, Format, MappingSet, TableMapping};
