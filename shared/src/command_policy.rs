//! Which Redis commands an SQL role may send, decided without asking Redis: `redis.on_commit`
//! must refuse a command while Redis is down, and `redis.command` must not pay a round trip to
//! learn what a command does.
//!
//! The answer comes from a static table of Redis's commands (`data/redis_commands.tsv`, made
//! from Redis 7.0's `COMMAND INFO`): each command's flags, ACL categories and key specs, the
//! rules that tell which arguments are keys and whether the command writes them. Under the
//! default policy a caller may not send
//! - administrative, dangerous or scripting commands (ACL categories `@admin`, `@dangerous`,
//!   `@scripting`, which covers EVAL, FCALL, FUNCTION; MODULE is `@admin`): scripts write keys
//!   they never declare, and the rest reconfigure or empty the server;
//! - commands that change the user or database of the connection (AUTH, HELLO, RESET, SELECT),
//!   which later calls on the same connection share;
//! - commands the table does not know (module commands, newer Redis versions);
//! - any write to a protected name: a synced table's keys (its template's prefix) or change
//!   stream, keys starting with `pg_redis:`, and a PUBLISH on a synced table's channel, on a
//!   `pg_redis:` channel or on a keyspace-notification channel.
//!
//! A write spec that cannot be followed (unknown, incomplete, or not matching the arguments)
//! makes every argument count as a key the command may write, so nothing slips through.
//!
//! Regenerating the table (from a redis-server of the wanted version, with `jq`):
//! ```text
//! redis-cli -3 --json COMMAND INFO | jq -r '
//!   def bs: if .type == "index" then "index=\(.spec.index)"
//!           elif .type == "keyword" then "keyword=\(.spec.keyword),\(.spec.startfrom)" else "unknown" end;
//!   def fk: if .type == "range" then "range=\(.spec.lastkey),\(.spec.keystep),\(.spec.limit)"
//!           elif .type == "keynum" then "keynum=\(.spec.keynumidx),\(.spec.firstkey),\(.spec.keystep)" else "unknown" end;
//!   def or_dash: if . == "" then "-" else . end;
//!   [.[] | (., .[9][])] | sort_by(.[0])[] | [.[0], (.[1]|tostring), (.[2] | join(",") | or_dash),
//!     (.[6] | join(",") | or_dash),
//!     ([.[8][] | "\(.flags | join(","));\(.begin_search | bs);\(.find_keys | fk)"] | join(" ") | or_dash)]
//!   | join("\t")'
//! ```
//! (then put the `#` header of the current file back on top).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::OnceLock;

const REDIS_COMMANDS: &str = include_str!("../data/redis_commands.tsv");

/// How much the SQL functions let a caller who is not a superuser do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// No admin, dangerous, scripting, session-changing or unknown commands, and no writes to
    /// protected names.
    Restricted,
    /// As `Restricted`, and no command that writes or publishes at all.
    ReadOnly,
    /// Everything the Redis user of `pg_redis.url` may do.
    Unrestricted,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum BeginSearch {
    Index(usize),
    Keyword { keyword: String, start_from: i64 },
    Unknown,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum FindKeys {
    Range { last_key: i64, step: i64, limit: i64 },
    KeyNum { num_index: i64, first_key: i64, step: i64 },
    Unknown,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct KeySpec {
    /// Anything but read-only access (RW, OW, RM).
    writes: bool,
    /// The argument is not a key (e.g. SPUBLISH's shard channel).
    not_key: bool,
    /// Redis says the spec may miss keys.
    incomplete: bool,
    begin: BeginSearch,
    find: FindKeys,
}

/// One command or subcommand (`config|set`) of the table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandSpec {
    pub name: String,
    pub arity: i64,
    pub flags: Vec<String>,
    pub categories: Vec<String>,
    key_specs: Vec<KeySpec>,
}

impl CommandSpec {
    pub fn has_flag(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }

    pub fn in_category(&self, category: &str) -> bool {
        self.categories.iter().any(|c| c == category)
    }

    /// The categories that make a command off limits by default, as written in messages.
    fn dangerous_categories(&self) -> Vec<&str> {
        self.categories.iter().map(String::as_str).filter(|c| DANGEROUS_CATEGORIES.contains(c)).collect()
    }
}

const DANGEROUS_CATEGORIES: [&str; 3] = ["@admin", "@dangerous", "@scripting"];

/// They change who the connection is or which database it uses, for every later call too.
const SESSION_COMMANDS: [&str; 4] = ["auth", "hello", "reset", "select"];

/// The commands Redis knows, by lower-case name (`get`, `config|set`).
#[derive(Clone, Debug, Default)]
pub struct CommandTable {
    commands: HashMap<String, CommandSpec>,
    /// Commands that only group subcommands (`config`, `object`).
    containers: HashSet<String>,
}

/// What a command line names, looked up in the table.
#[derive(Debug)]
pub enum Lookup<'t> {
    Known(&'t CommandSpec),
    /// Not in the table; the name as it would be shown (`FOO`, `CONFIG FOO`).
    Unknown(String),
}

impl CommandTable {
    /// The table of Redis 7.0, parsed once per process.
    pub fn builtin() -> Result<&'static CommandTable, String> {
        static TABLE: OnceLock<Result<CommandTable, String>> = OnceLock::new();
        TABLE.get_or_init(|| CommandTable::parse(REDIS_COMMANDS)).as_ref().map_err(Clone::clone)
    }

    /// Parses the tab-separated format of `data/redis_commands.tsv`.
    pub fn parse(text: &str) -> Result<CommandTable, String> {
        let mut table = CommandTable::default();
        for (n, line) in text.lines().enumerate() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let spec = parse_line(line).map_err(|e| format!("line {} of the command table: {e}", n + 1))?;
            if let Some((container, _)) = spec.name.split_once('|') {
                table.containers.insert(container.to_owned());
            }
            table.commands.insert(spec.name.clone(), spec);
        }
        Ok(table)
    }

    pub fn len(&self) -> usize {
        self.commands.len()
    }

    pub fn is_empty(&self) -> bool {
        self.commands.is_empty()
    }

    /// The command (or subcommand) that `args` runs.
    pub fn lookup<S: AsRef<str>>(&self, args: &[S]) -> Lookup<'_> {
        let Some(first) = args.first() else {
            return Lookup::Unknown(String::new());
        };
        let name = first.as_ref().to_ascii_lowercase();
        if self.containers.contains(&name) {
            if let Some(sub) = args.get(1) {
                let full = format!("{name}|{}", sub.as_ref().to_ascii_lowercase());
                return match self.commands.get(&full) {
                    Some(spec) => Lookup::Known(spec),
                    None => Lookup::Unknown(format!(
                        "{} {}",
                        first.as_ref().to_ascii_uppercase(),
                        sub.as_ref().to_ascii_uppercase()
                    )),
                };
            }
        }
        match self.commands.get(&name) {
            Some(spec) => Lookup::Known(spec),
            None => Lookup::Unknown(first.as_ref().to_ascii_uppercase()),
        }
    }
}

fn parse_line(line: &str) -> Result<CommandSpec, String> {
    let fields: Vec<&str> = line.split('\t').collect();
    let [name, arity, flags, categories, specs] = fields[..] else {
        return Err(format!("expected 5 tab-separated fields, found {}", fields.len()));
    };
    let list = |s: &str| -> Vec<String> {
        if s == "-" {
            Vec::new()
        } else {
            s.split(',').map(str::to_owned).collect()
        }
    };
    let key_specs =
        if specs == "-" { Vec::new() } else { specs.split(' ').map(parse_key_spec).collect::<Result<_, _>>()? };
    Ok(CommandSpec {
        name: name.to_owned(),
        arity: arity.parse().map_err(|_| format!("arity \"{arity}\" of {name} is not a number"))?,
        flags: list(flags),
        categories: list(categories),
        key_specs,
    })
}

fn parse_key_spec(s: &str) -> Result<KeySpec, String> {
    let mut parts = s.split(';');
    let (Some(flags), Some(begin), Some(find), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(format!("key spec \"{s}\" is not flags;begin_search;find_keys"));
    };
    let flags: Vec<&str> = flags.split(',').collect();
    let int = |v: &str| v.parse::<i64>().map_err(|_| format!("\"{v}\" in key spec \"{s}\" is not a number"));
    let begin = match begin.split_once('=') {
        Some(("index", pos)) => {
            BeginSearch::Index(usize::try_from(int(pos)?).map_err(|_| format!("negative index in key spec \"{s}\""))?)
        }
        Some(("keyword", v)) => {
            let (keyword, start) =
                v.rsplit_once(',').ok_or_else(|| format!("keyword search \"{v}\" needs WORD,STARTFROM"))?;
            BeginSearch::Keyword { keyword: keyword.to_owned(), start_from: int(start)? }
        }
        None if begin == "unknown" => BeginSearch::Unknown,
        _ => return Err(format!("unknown begin_search \"{begin}\"")),
    };
    let three = |v: &str| -> Result<[i64; 3], String> {
        let n: Vec<i64> = v.split(',').map(int).collect::<Result<_, _>>()?;
        n.try_into().map_err(|_| format!("\"{v}\" in key spec \"{s}\" needs three numbers"))
    };
    let find = match find.split_once('=') {
        Some(("range", v)) => {
            let [last_key, step, limit] = three(v)?;
            FindKeys::Range { last_key, step, limit }
        }
        Some(("keynum", v)) => {
            let [num_index, first_key, step] = three(v)?;
            FindKeys::KeyNum { num_index, first_key, step }
        }
        None if find == "unknown" => FindKeys::Unknown,
        _ => return Err(format!("unknown find_keys \"{find}\"")),
    };
    Ok(KeySpec {
        writes: !flags.contains(&"RO"),
        not_key: flags.contains(&"not_key"),
        incomplete: flags.contains(&"incomplete"),
        begin,
        find,
    })
}

/// The argument positions a spec names, or None when it cannot be followed for these
/// arguments. A keyword that is absent names no key (an optional STORE, say).
fn key_positions<S: AsRef<str>>(spec: &KeySpec, args: &[S]) -> Option<Vec<usize>> {
    let argc = args.len() as i64;
    let first = match &spec.begin {
        BeginSearch::Index(i) => *i as i64,
        BeginSearch::Keyword { keyword, start_from } => {
            // As Redis does: forwards from a positive start, backwards from a negative one.
            let found = if *start_from > 0 {
                (*start_from..argc).find(|&i| args[i as usize].as_ref().eq_ignore_ascii_case(keyword))
            } else {
                (1..=argc + start_from).rev().find(|&i| args[i as usize].as_ref().eq_ignore_ascii_case(keyword))
            };
            match found {
                Some(i) => i + 1,
                None => return Some(Vec::new()),
            }
        }
        BeginSearch::Unknown => return None,
    };
    let (first, last, step) = match spec.find {
        FindKeys::Range { last_key, step, limit } => {
            let last = if last_key >= 0 {
                first + last_key
            } else if limit <= 0 {
                argc + last_key
            } else {
                first + ((argc - first) / limit + last_key)
            };
            (first, last, step)
        }
        FindKeys::KeyNum { num_index, first_key, step } => {
            let count: i64 =
                args.get(usize::try_from(first + num_index).ok()?)?.as_ref().parse().ok().filter(|n| *n >= 0)?;
            let first = first + first_key;
            (first, first + (count - 1) * step.max(1), step)
        }
        FindKeys::Unknown => return None,
    };
    if step <= 0 || first < 1 || first >= argc || last >= argc || last < first {
        return None;
    }
    Some((first..=last).step_by(step as usize).map(|i| i as usize).collect())
}

/// The names a command would write (keys) or publish on (channels); checked against the
/// protected names once these are known.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Targets<'a> {
    pub written_keys: Vec<&'a str>,
    pub channels: Vec<&'a str>,
}

impl Targets<'_> {
    pub fn is_empty(&self) -> bool {
        self.written_keys.is_empty() && self.channels.is_empty()
    }
}

/// Commands a superuser lets other roles run although the policy would refuse them
/// (`pg_redis.sql_allowed_commands`): `info`, `config|get`, or a whole container (`config`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowList(HashSet<String>);

impl AllowList {
    /// From a comma- or space-separated list; `CONFIG GET` and `config|get` are the same.
    pub fn parse(list: &str) -> AllowList {
        let mut names = HashSet::new();
        for item in list.split(',') {
            let words: Vec<String> =
                item.split([' ', '|', '\t']).filter(|w| !w.is_empty()).map(str::to_ascii_lowercase).collect();
            if !words.is_empty() {
                names.insert(words.join("|"));
            }
        }
        AllowList(names)
    }

    fn allows(&self, name: &str) -> bool {
        self.0.contains(name) || name.split_once('|').is_some_and(|(container, _)| self.0.contains(container))
    }
}

/// Why a command was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Admin, dangerous or scripting.
    Dangerous {
        command: String,
        categories: String,
    },
    /// Changes the connection's user or database.
    SessionState {
        command: String,
    },
    Unknown {
        command: String,
    },
    /// Writes or publishes under the read-only policy.
    ReadOnly {
        command: String,
    },
    ProtectedKey {
        command: String,
        key: String,
        owner: Owner,
    },
    ProtectedChannel {
        command: String,
        channel: String,
        owner: Owner,
    },
}

/// Who a protected name belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Owner {
    /// A synced table's keys (by template prefix).
    TableKeys {
        table: String,
        prefix: String,
    },
    TableStream {
        table: String,
    },
    TableChannel {
        table: String,
    },
    PgRedis,
    /// Keyspace-notification channels: Redis publishes on them itself.
    Notifications,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Dangerous { command, categories } => {
                write!(f, "{command} is an administrative or scripting command ({categories}); from SQL only superusers may run it")
            }
            Refusal::SessionState { command } => {
                write!(f, "{command} would change the user or database of this session's Redis connection, which every later call shares; from SQL only superusers may run it")
            }
            Refusal::Unknown { command } => {
                write!(f, "pg_redis does not know the Redis command {command}, so it cannot tell what it writes; from SQL only superusers may run it")
            }
            Refusal::ReadOnly { command } => write!(f, "{command} writes to Redis, and pg_redis.sql_command_policy is read_only"),
            Refusal::ProtectedKey { command, key, owner } => match owner {
                Owner::TableKeys { table, prefix } => {
                    write!(f, "{command} would write key \"{key}\", which belongs to synced table {table} (keys starting with \"{prefix}\"): pg_redis keeps it equal to the table")
                }
                Owner::TableStream { table } => write!(f, "{command} would write \"{key}\", the change stream of synced table {table}: only pg_redis writes its events"),
                Owner::TableChannel { table } => write!(f, "{command} would write \"{key}\", the change channel of synced table {table}"),
                Owner::PgRedis | Owner::Notifications => write!(f, "{command} would write key \"{key}\": keys starting with \"pg_redis:\" belong to pg_redis itself"),
            },
            Refusal::ProtectedChannel { command, channel, owner } => match owner {
                Owner::TableChannel { table } | Owner::TableKeys { table, .. } | Owner::TableStream { table } => {
                    write!(f, "{command} would publish on \"{channel}\", the change channel of synced table {table}: only pg_redis publishes its events")
                }
                Owner::PgRedis => write!(f, "{command} would publish on \"{channel}\": channels starting with \"pg_redis:\" belong to pg_redis itself"),
                Owner::Notifications => write!(f, "{command} would publish on \"{channel}\", a keyspace-notification channel that only Redis itself publishes on"),
            },
        }
    }
}

impl Refusal {
    /// What the caller can do about it.
    pub fn hint(&self) -> String {
        match self {
            Refusal::Dangerous { command, .. } | Refusal::SessionState { command } | Refusal::Unknown { command } | Refusal::ReadOnly { command } => format!(
                "run it as a superuser, or have a superuser add '{}' to pg_redis.sql_allowed_commands (see \"Privileges\" in the README)",
                command.to_ascii_lowercase()
            ),
            Refusal::ProtectedKey { owner: Owner::TableKeys { .. } | Owner::TableStream { .. }, .. } => {
                "change the table's rows in PostgreSQL and let pg_redis write Redis, or use a key outside the synced tables' prefixes".into()
            }
            Refusal::ProtectedKey { .. } | Refusal::ProtectedChannel { .. } => "use another name; a superuser can change pg_redis.sql_command_policy (see \"Privileges\" in the README)".into(),
        }
    }
}

/// Decides whether a caller who is not a superuser may send `args` under `policy`; when yes,
/// the names it would write, to be checked against [`ProtectedNames`].
pub fn check_command<'a, S: AsRef<str>>(
    table: &CommandTable,
    args: &'a [S],
    policy: Policy,
    allowed: &AllowList,
) -> Result<Targets<'a>, Refusal> {
    if policy == Policy::Unrestricted || args.is_empty() {
        return Ok(Targets::default());
    }
    let every_argument = || Targets {
        written_keys: args[1..].iter().map(AsRef::as_ref).collect(),
        channels: args[1..].iter().map(AsRef::as_ref).collect(),
    };
    let spec = match table.lookup(args) {
        Lookup::Known(spec) => spec,
        Lookup::Unknown(command) => {
            let name = command.to_ascii_lowercase().replace(' ', "|");
            if !allowed.allows(&name) {
                return Err(Refusal::Unknown { command });
            }
            // Allowed though unknown: any argument may be a key or channel it writes.
            return Ok(every_argument());
        }
    };
    let shown = || spec.name.to_ascii_uppercase().replace('|', " ");
    let is_allowed = allowed.allows(&spec.name);
    if !is_allowed {
        let dangerous = spec.dangerous_categories();
        if !dangerous.is_empty() || spec.has_flag("admin") {
            let categories = if dangerous.is_empty() { "admin".to_owned() } else { dangerous.join(", ") };
            return Err(Refusal::Dangerous { command: shown(), categories });
        }
        if SESSION_COMMANDS.contains(&spec.name.as_str()) {
            return Err(Refusal::SessionState { command: shown() });
        }
    }
    let publishes = matches!(spec.name.as_str(), "publish" | "spublish");
    if policy == Policy::ReadOnly && !is_allowed && (spec.has_flag("write") || publishes) {
        return Err(Refusal::ReadOnly { command: shown() });
    }
    let mut targets = Targets::default();
    if publishes {
        targets.channels.extend(args.get(1).map(AsRef::as_ref));
    }
    for ks in spec.key_specs.iter().filter(|k| k.writes && !k.not_key) {
        match key_positions(ks, args) {
            Some(positions) if !ks.incomplete => {
                targets.written_keys.extend(positions.into_iter().map(|i| args[i].as_ref()))
            }
            // A write the spec cannot follow: assume the worst.
            _ => return Ok(every_argument()),
        }
    }
    Ok(targets)
}

/// Names only pg_redis writes: the synced tables' keys, streams and channels, and its own.
#[derive(Clone, Debug, Default)]
pub struct ProtectedNames {
    key_prefixes: Vec<(String, String)>,
    streams: Vec<(String, String)>,
    channels: Vec<(String, String)>,
}

const NOTIFICATION_PREFIXES: [&str; 2] = ["__keyspace@", "__keyevent@"];

impl ProtectedNames {
    /// Adds a synced table: its display name, key template prefix, stream and channel.
    pub fn add_table(&mut self, table: &str, key_prefix: &str, stream: Option<&str>, channel: Option<&str>) {
        self.key_prefixes.push((key_prefix.to_owned(), table.to_owned()));
        if let Some(s) = stream {
            self.streams.push((s.to_owned(), table.to_owned()));
        }
        if let Some(c) = channel {
            self.channels.push((c.to_owned(), table.to_owned()));
        }
    }

    /// Who owns `key`, if anyone but the caller may write it.
    pub fn key_owner(&self, key: &str) -> Option<Owner> {
        if key.starts_with(crate::apply::RESERVED_PREFIX) {
            return Some(Owner::PgRedis);
        }
        if let Some((_, table)) = self.streams.iter().find(|(s, _)| s == key) {
            return Some(Owner::TableStream { table: table.clone() });
        }
        self.key_prefixes
            .iter()
            .find(|(p, _)| key.starts_with(p.as_str()))
            .map(|(p, t)| Owner::TableKeys { table: t.clone(), prefix: p.clone() })
    }

    /// Who owns `channel`, if anyone but the caller may publish on it.
    pub fn channel_owner(&self, channel: &str) -> Option<Owner> {
        if channel.starts_with(crate::apply::RESERVED_PREFIX) {
            return Some(Owner::PgRedis);
        }
        if NOTIFICATION_PREFIXES.iter().any(|p| channel.starts_with(p)) {
            return Some(Owner::Notifications);
        }
        self.channels.iter().find(|(c, _)| c == channel).map(|(_, t)| Owner::TableChannel { table: t.clone() })
    }

    /// Refuses the first protected name among `targets`.
    pub fn check<S: AsRef<str>>(&self, args: &[S], targets: &Targets<'_>) -> Result<(), Refusal> {
        let command = || args.first().map(|a| a.as_ref().to_ascii_uppercase()).unwrap_or_default();
        for key in &targets.written_keys {
            if let Some(owner) = self.key_owner(key) {
                return Err(Refusal::ProtectedKey { command: command(), key: (*key).to_owned(), owner });
            }
        }
        for channel in &targets.channels {
            if let Some(owner) = self.channel_owner(channel) {
                return Err(Refusal::ProtectedChannel { command: command(), channel: (*channel).to_owned(), owner });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> &'static CommandTable {
        CommandTable::builtin().expect("the built-in table parses")
    }

    fn check(args: &[&str], policy: Policy) -> Result<Targets<'static>, Refusal> {
        let owned: &'static [String] =
            Box::leak(args.iter().map(|s| s.to_string()).collect::<Vec<_>>().into_boxed_slice());
        check_command(table(), owned, policy, &AllowList::default())
    }

    fn written(args: &[&str]) -> Vec<&'static str> {
        check(args, Policy::Restricted).unwrap_or_else(|r| panic!("{args:?}: {r}")).written_keys
    }

    fn protected() -> ProtectedNames {
        let mut p = ProtectedNames::default();
        p.add_table("users", "users:", Some("app.public.users"), Some("users-changes"));
        p
    }

    #[test]
    fn the_table_has_every_command_of_redis_7_0() {
        let t = table();
        assert!(t.len() > 350, "{}", t.len());
        for name in [
            "get",
            "set",
            "config|set",
            "acl|setuser",
            "eval",
            "fcall",
            "function|load",
            "module|load",
            "xread",
            "object|encoding",
        ] {
            assert!(matches!(t.lookup(&name.split('|').collect::<Vec<_>>()), Lookup::Known(_)), "{name}");
        }
        assert!(matches!(t.lookup(&["CONFIG", "NOPE"]), Lookup::Unknown(n) if n == "CONFIG NOPE"));
        assert!(matches!(t.lookup(&["pg.get", "k"]), Lookup::Unknown(n) if n == "PG.GET"));
    }

    #[test]
    fn admin_dangerous_and_scripting_commands_are_refused() {
        for args in [
            &["CONFIG", "SET", "maxmemory", "1"][..],
            &["acl", "setuser", "x", "on"],
            &["FLUSHALL"],
            &["FLUSHDB"],
            &["EVAL", "return 1", "0"],
            &["EVALSHA", "abc", "0"],
            &["FCALL", "f", "0"],
            &["FUNCTION", "LOAD", "x"],
            &["SCRIPT", "LOAD", "x"],
            &["MODULE", "LOAD", "/x.so"],
            &["SHUTDOWN"],
            &["DEBUG", "SLEEP", "0"],
            &["KEYS", "*"],
            &["MIGRATE", "h", "1", "k", "0", "1"],
            &["RESTORE", "k", "0", "x"],
            &["SORT", "k", "STORE", "d"],
            &["CLIENT", "KILL", "ID", "1"],
            &["SWAPDB", "0", "1"],
        ] {
            match check(args, Policy::Restricted) {
                Err(Refusal::Dangerous { .. }) => {}
                other => panic!("{args:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn session_and_unknown_commands_are_refused() {
        for args in [&["AUTH", "pw"][..], &["HELLO", "3"], &["RESET"], &["SELECT", "1"]] {
            assert!(matches!(check(args, Policy::Restricted), Err(Refusal::SessionState { .. })), "{args:?}");
        }
        assert_eq!(check(&["PG.GET", "k"], Policy::Restricted), Err(Refusal::Unknown { command: "PG.GET".into() }));
        assert_eq!(
            check(&["OBJECT", "WHATEVER", "k"], Policy::Restricted),
            Err(Refusal::Unknown { command: "OBJECT WHATEVER".into() })
        );
    }

    #[test]
    fn keys_written_follow_the_key_specs() {
        assert_eq!(written(&["SET", "a", "1"]), ["a"]);
        assert_eq!(written(&["GET", "a"]), Vec::<&str>::new());
        assert_eq!(written(&["DEL", "a", "b", "c"]), ["a", "b", "c"]);
        assert_eq!(written(&["MSET", "a", "1", "b", "2"]), ["a", "b"]);
        assert_eq!(written(&["HSET", "h", "f", "v"]), ["h"]);
        assert_eq!(written(&["XADD", "s", "*", "f", "v"]), ["s"]);
        assert_eq!(written(&["ZUNIONSTORE", "dst", "2", "a", "b"]), ["dst"]);
        assert_eq!(written(&["ZINTERSTORE", "dst", "2", "a", "b", "WEIGHTS", "1", "2"]), ["dst"]);
        assert_eq!(written(&["BITOP", "AND", "dst", "a", "b"]), ["dst"]);
        assert_eq!(written(&["LMPOP", "2", "a", "b", "LEFT"]), ["a", "b"]);
        assert_eq!(written(&["LMOVE", "a", "b", "LEFT", "RIGHT"]), ["a", "b"]);
        assert_eq!(written(&["RENAME", "a", "b"]), ["a", "b"]);
        assert_eq!(written(&["COPY", "a", "b", "DB", "1"]), ["b"]);
        assert_eq!(written(&["GEORADIUS", "g", "0", "0", "1", "km", "STORE", "dst"]), ["dst"]);
        assert_eq!(written(&["GEORADIUS", "g", "0", "0", "1", "km", "STOREDIST", "dst"]), ["dst"]);
        assert_eq!(written(&["GEORADIUS", "g", "0", "0", "1", "km"]), Vec::<&str>::new());
        assert_eq!(written(&["GEOSEARCHSTORE", "dst", "src", "FROMMEMBER", "m", "BYRADIUS", "1", "km"]), ["dst"]);
        assert_eq!(written(&["XREAD", "COUNT", "1", "STREAMS", "a", "b", "0", "0"]), Vec::<&str>::new());
        assert_eq!(written(&["XREADGROUP", "GROUP", "g", "c", "STREAMS", "a", "b", ">", ">"]), Vec::<&str>::new());
        assert_eq!(written(&["XACK", "s", "g", "1-1"]), ["s"]);
        assert_eq!(written(&["OBJECT", "ENCODING", "a"]), Vec::<&str>::new());
        assert_eq!(written(&["EXPIRE", "a", "10"]), ["a"]);
        assert_eq!(written(&["INCRBY", "a", "10"]), ["a"]);
        assert_eq!(written(&["SMOVE", "a", "b", "m"]), ["a", "b"]);
    }

    #[test]
    fn a_write_spec_that_cannot_be_followed_counts_every_argument() {
        // numkeys that is not a number: Redis will refuse it, but the check assumes the worst.
        assert_eq!(written(&["LMPOP", "x", "users:1", "LEFT"]), ["x", "users:1", "LEFT"]);
        assert_eq!(written(&["LMPOP", "5", "a"]), ["5", "a"]);
        // Keys read through a spec that cannot be followed are no concern: only writes are.
        assert_eq!(written(&["ZUNIONSTORE", "dst", "x", "users:1"]), ["dst"]);
        // Allowed though dangerous: SORT's STORE has no key spec Redis can give.
        let allowed = AllowList::parse("sort");
        let args = ["SORT", "k", "BY", "nosort", "STORE", "users:1"];
        let t = check_command(table(), &args, Policy::Restricted, &allowed).unwrap();
        assert!(t.written_keys.contains(&"users:1"));
    }

    #[test]
    fn protected_names_refuse_writes_and_publishes() {
        let p = protected();
        let refuse = |args: &[&str]| {
            let t = check(args, Policy::Restricted).unwrap();
            p.check(args, &t)
        };
        assert!(matches!(
            refuse(&["SET", "users:1", "x"]),
            Err(Refusal::ProtectedKey { owner: Owner::TableKeys { .. }, .. })
        ));
        assert!(
            matches!(refuse(&["DEL", "other", "users:7"]), Err(Refusal::ProtectedKey { key, .. }) if key == "users:7")
        );
        assert!(matches!(
            refuse(&["XADD", "app.public.users", "*", "f", "v"]),
            Err(Refusal::ProtectedKey { owner: Owner::TableStream { .. }, .. })
        ));
        assert!(matches!(refuse(&["XTRIM", "app.public.users", "MAXLEN", "0"]), Err(Refusal::ProtectedKey { .. })));
        assert!(matches!(
            refuse(&["SET", "pg_redis:mappings:app", "1"]),
            Err(Refusal::ProtectedKey { owner: Owner::PgRedis, .. })
        ));
        assert!(matches!(refuse(&["RENAME", "mine", "users:1"]), Err(Refusal::ProtectedKey { .. })));
        assert!(matches!(refuse(&["ZUNIONSTORE", "users:9", "1", "z"]), Err(Refusal::ProtectedKey { .. })));
        assert!(matches!(refuse(&["PUBLISH", "users-changes", "x"]), Err(Refusal::ProtectedChannel { .. })));
        assert!(matches!(
            refuse(&["SPUBLISH", "pg_redis:x", "x"]),
            Err(Refusal::ProtectedChannel { owner: Owner::PgRedis, .. })
        ));
        assert!(matches!(
            refuse(&["PUBLISH", "__keyspace@0__:users:1", "set"]),
            Err(Refusal::ProtectedChannel { owner: Owner::Notifications, .. })
        ));
        // Reads of synced keys, and writes elsewhere, are fine.
        for ok in [
            &["GET", "users:1"][..],
            &["XRANGE", "app.public.users", "-", "+"],
            &["SET", "user:1", "x"],
            &["PUBLISH", "news", "x"],
            &["ZUNIONSTORE", "z2", "1", "users:1"],
        ] {
            assert_eq!(refuse(ok), Ok(()), "{ok:?}");
        }
    }

    #[test]
    fn read_only_refuses_writes_and_publishes() {
        assert!(matches!(check(&["SET", "a", "1"], Policy::ReadOnly), Err(Refusal::ReadOnly { .. })));
        assert!(matches!(check(&["PUBLISH", "c", "m"], Policy::ReadOnly), Err(Refusal::ReadOnly { .. })));
        assert!(matches!(check(&["CONFIG", "SET", "a", "b"], Policy::ReadOnly), Err(Refusal::Dangerous { .. })));
        assert!(check(&["GET", "a"], Policy::ReadOnly).is_ok());
        assert!(check(&["SCAN", "0"], Policy::ReadOnly).is_ok());
    }

    #[test]
    fn unrestricted_checks_nothing() {
        assert_eq!(check(&["FLUSHALL"], Policy::Unrestricted), Ok(Targets::default()));
        assert_eq!(check(&["SET", "users:1", "x"], Policy::Unrestricted), Ok(Targets::default()));
    }

    #[test]
    fn the_allow_list_lifts_category_checks_but_not_the_key_rule() {
        let allowed = AllowList::parse("INFO, config get ,PG.GET");
        let t = table();
        assert!(check_command(t, &["INFO"], Policy::Restricted, &allowed).is_ok());
        assert!(check_command(t, &["CONFIG", "GET", "maxmemory"], Policy::Restricted, &allowed).is_ok());
        assert!(matches!(
            check_command(t, &["CONFIG", "SET", "maxmemory", "1"], Policy::Restricted, &allowed),
            Err(Refusal::Dangerous { .. })
        ));
        let targets = check_command(t, &["PG.GET", "users:1"], Policy::Restricted, &allowed).unwrap();
        assert!(
            protected().check(&["PG.GET", "users:1"], &targets).is_err(),
            "an unknown command's arguments all count as written keys"
        );
        assert!(check_command(t, &["CONFIG", "SET", "a", "b"], Policy::Restricted, &AllowList::parse("config")).is_ok());
        assert_eq!(AllowList::parse("config|get"), AllowList::parse("CONFIG GET"));
    }

    #[test]
    fn refusals_name_the_command_and_what_to_do() {
        let r = check(&["config", "set", "x", "y"], Policy::Restricted).unwrap_err();
        assert!(r.to_string().contains("CONFIG SET"), "{r}");
        assert!(r.hint().contains("add 'config set' to pg_redis.sql_allowed_commands"), "{}", r.hint());
        let r = protected()
            .check(&["SET", "users:1"], &Targets { written_keys: vec!["users:1"], channels: vec![] })
            .unwrap_err();
        assert!(r.to_string().contains("users:1") && r.to_string().contains("synced table users"), "{r}");
    }

    #[test]
    fn malformed_tables_are_errors_not_panics() {
        assert!(CommandTable::parse("get\t2\treadonly").is_err());
        assert!(CommandTable::parse("get\tx\t-\t-\t-").is_err());
        assert!(CommandTable::parse("get\t2\t-\t-\tRO;index=1").is_err());
        assert!(CommandTable::parse("get\t2\t-\t-\tRO;index=-1;range=0,1,0").is_err());
        assert!(CommandTable::parse("get\t2\t-\t-\tRO;index=1;range=0,1").is_err());
        assert!(CommandTable::parse("# only a comment\n").is_ok_and(|t| t.is_empty()));
    }
}
