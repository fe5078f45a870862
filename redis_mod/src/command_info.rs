//! Command metadata for `COMMAND INFO/DOCS` and cluster routing (key specs), and the ACL
//! category `pgcache` where the server supports module categories (Redis 7.4+; on older
//! servers restrict the commands by name, e.g. `ACL SETUSER app -pg.get`).

use crate::guard;
use redis_module::commands::{get_redis_key_spec, BeginSearch, FindKeys, KeySpec, KeySpecFlags};
use redis_module::{raw, Context};
use std::ffi::CString;
use std::os::raw::c_int;

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
    handler: extern "C" fn(*mut raw::RedisModuleCtx, *mut *mut raw::RedisModuleString, c_int) -> c_int,
    flags: &str,
    first: i32,
    last: i32,
    step: i32,
) -> bool {
    let (Ok(cname), Ok(cflags)) = (CString::new(name), CString::new(flags)) else { return false };
    // SAFETY: called during OnLoad with the load context; Redis copies the strings.
    let ok = unsafe {
        raw::RedisModule_CreateCommand.is_some_and(|create| {
            create(ctx.ctx, cname.as_ptr(), Some(handler), cflags.as_ptr(), first, last, step)
                == raw::REDISMODULE_OK as c_int
        })
    };
    if !ok {
        guard::log_warning(&format!("could not create command {name}"));
    }
    ok
}

/// Registers the `pgcache` category if the server can (call before the commands get theirs).
pub fn add_category(ctx: &Context) -> bool {
    // SAFETY: API pointer read once; called during OnLoad with the load context.
    unsafe {
        match raw::RedisModule_AddACLCategory {
            Some(add) => match CString::new(ACL_CATEGORY) {
                Ok(name) => add(ctx.ctx, name.as_ptr()) == raw::REDISMODULE_OK as c_int,
                Err(_) => false,
            },
            None => {
                guard::log_notice(
                    "this Redis has no module ACL categories (7.4+): restrict PG.* commands by name in ACL rules",
                );
                false
            }
        }
    }
}

/// Sets summary, arity, key specs and (where supported) ACL categories of one command.
pub fn apply(ctx: &Context, info: &Info, with_category: bool) {
    // SAFETY: called during OnLoad; the strings and key specs outlive the call (Redis copies).
    unsafe {
        let (Some(get_cmd), Some(set_info)) = (raw::RedisModule_GetCommand, raw::RedisModule_SetCommandInfo) else {
            return;
        };
        let Ok(cname) = CString::new(info.name) else { return };
        let cmd = get_cmd(ctx.ctx, cname.as_ptr());
        if cmd.is_null() {
            return;
        }
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
            key_specs: if matches!(info.keys, Keys::None) {
                std::ptr::null_mut()
            } else {
                key_specs.as_ptr() as *mut _
            },
            args: std::ptr::null_mut(),
        };
        if set_info(cmd, &ci) != raw::REDISMODULE_OK as c_int {
            guard::log_warning(&format!("could not set command info of {}", info.name));
        }
        if let Some(set_categories) = raw::RedisModule_SetCommandACLCategories {
            let cats = if with_category {
                format!("{} {}", info.categories, ACL_CATEGORY)
            } else {
                info.categories.to_owned()
            };
            if let Ok(c) = CString::new(cats.trim()) {
                set_categories(cmd, c.as_ptr());
            }
        }
    }
}
