//! Command metadata for `COMMAND INFO/DOCS` and cluster routing (key specs), and the ACL
//! category `pgcache` where the server supports module categories (Redis 7.4+; on older
//! servers restrict the commands by name, e.g. `ACL SETUSER app -pg.get`).

use crate::{guard, module_api};
use redis_module::commands::{get_redis_key_spec, BeginSearch, FindKeys, KeySpec, KeySpecFlags};
use redis_module::{raw, Context};
use std::ffi::CString;

pub const ACL_CATEGORY: &str = "pgcache";

/// Keys: none, one (the first argument), or all arguments from the first on.
#[derive(Clone, Copy)]
pub enum Keys {
    None,
    First,
    All,
}

pub struct Info {
    pub name: &'static str,
    pub summary: &'static str,
    pub complexity: &'static str,
    pub arity: i32,
    pub keys: Keys,
    pub key_flags: KeySpecFlags,
    /// Standard categories besides `pgcache` (applied on 7.2+ only).
    pub categories: &'static str,
}

/// Registers a command whose handler takes Redis's raw arguments (the hot path of PG.GET).
pub fn create_raw(
    ctx: &Context,
    name: &str,
    handler: module_api::RawCommand,
    flags: &str,
    first: i32,
    last: i32,
    step: i32,
) -> bool {
    let (Ok(cname), Ok(cflags)) = (CString::new(name), CString::new(flags)) else { return false };
    // Called during OnLoad with the load context; Redis copies the strings.
    let ok = module_api::create_command(ctx, &cname, handler, &cflags, first, last, step);
    if !ok {
        guard::log_warning(&format!("could not create command {name}"));
    }
    ok
}

/// Registers the `pgcache` category if the server can (call before the commands get theirs).
pub fn add_category(ctx: &Context) -> bool {
    let Ok(name) = CString::new(ACL_CATEGORY) else { return false };
    // Called during OnLoad with the load context.
    match module_api::add_acl_category(ctx, &name) {
        Some(added) => added,
        None => {
            guard::log_notice(
                "this Redis has no module ACL categories (7.4+): restrict PG.* commands by name in ACL rules",
            );
            false
        }
    }
}

/// Sets summary, arity, key specs and (where supported) ACL categories of one command.
pub fn apply(ctx: &Context, info: &Info, with_category: bool) {
    if !module_api::has_command_info() {
        return;
    }
    let Ok(cname) = CString::new(info.name) else { return };
    let Some(cmd) = module_api::get_command(ctx, &cname) else { return };
    static VERSION: raw::RedisModuleCommandInfoVersion = raw::RedisModuleCommandInfoVersion {
        version: 1,
        sizeof_historyentry: size_of::<raw::RedisModuleCommandHistoryEntry>(),
        sizeof_keyspec: size_of::<raw::RedisModuleCommandKeySpec>(),
        sizeof_arg: size_of::<raw::RedisModuleCommandArg>(),
    };
    let specs = match info.keys {
        Keys::None => vec![],
        Keys::First => vec![KeySpec::new(
            None,
            KeySpecFlags::from_bits_truncate(info.key_flags.bits()),
            BeginSearch::new_index(1),
            FindKeys::new_range(0, 1, 0),
        )],
        Keys::All => vec![KeySpec::new(
            None,
            KeySpecFlags::from_bits_truncate(info.key_flags.bits()),
            BeginSearch::new_index(1),
            FindKeys::new_range(-1, 1, 0),
        )],
    };
    let key_specs = get_redis_key_spec(specs);
    let (Ok(summary), Ok(complexity), Ok(since)) =
        (CString::new(info.summary), CString::new(info.complexity), CString::new(env!("CARGO_PKG_VERSION")))
    else {
        return;
    };
    let ci = raw::RedisModuleCommandInfo {
        version: &VERSION,
        summary: summary.as_ptr(),
        complexity: complexity.as_ptr(),
        since: since.as_ptr(),
        history: std::ptr::null_mut(),
        tips: std::ptr::null(),
        arity: info.arity,
        key_specs: if matches!(info.keys, Keys::None) { std::ptr::null_mut() } else { key_specs.as_ptr() as *mut _ },
        args: std::ptr::null_mut(),
    };
    // SAFETY: called during OnLoad; the strings and key specs outlive the call (Redis copies).
    if !unsafe { module_api::set_command_info(&cmd, &ci) } {
        guard::log_warning(&format!("could not set command info of {}", info.name));
    }
    let cats = if with_category { format!("{} {}", info.categories, ACL_CATEGORY) } else { info.categories.to_owned() };
    if let Ok(c) = CString::new(cats.trim()) {
        module_api::set_command_acl_categories(&cmd, &c);
    }
}
