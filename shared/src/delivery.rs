//! Rules of delivery that need no server: which refusals of Redis go away by themselves, and
//! where a batch must end. The worker follows them; unit tests pin them down here.

/// Error replies that may go away by themselves (memory freed, a replica promoted, the data
/// loaded, a script finished): what they refused is retried, never parked.
pub fn is_transient(reply: &str) -> bool {
    ["OOM", "BUSY", "LOADING", "MASTERDOWN", "READONLY", "TRYAGAIN", "CLUSTERDOWN", "NOREPLICAS"]
        .iter()
        .any(|p| reply.starts_with(p))
}

/// Where the first run of consecutive queued commands in `items` ends (an index), if any. A
/// batch ends there: should Redis refuse one of them for a while, none queued after it may run
/// first.
pub fn end_of_first_command_run<T>(items: &[T], is_command: impl Fn(&T) -> bool) -> Option<usize> {
    let start = items.iter().position(&is_command)?;
    Some(items.iter().skip(start).position(|i| !is_command(i)).map_or(items.len(), |n| start + n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_refusals() {
        assert!(is_transient("LOADING Redis is loading the dataset in memory"));
        assert!(is_transient("OOM command not allowed when used memory > 'maxmemory'."));
        assert!(is_transient("BUSY Redis is busy running a script."));
        assert!(is_transient("READONLY You can't write against a read only replica."));
        assert!(!is_transient("WRONGTYPE Operation against a key holding the wrong kind of value"));
        assert!(!is_transient("ERR unknown command 'NOPE'"));
        assert!(!is_transient("NOPERM this user has no permissions to run the 'set' command"));
    }

    #[test]
    fn a_batch_ends_after_its_first_run_of_commands() {
        let is_cmd = |c: &char| *c == 'x';
        assert_eq!(end_of_first_command_run(&['u', 'u'], is_cmd), None);
        assert_eq!(end_of_first_command_run(&['u', 'x', 'x', 'u', 'x'], is_cmd), Some(3));
        assert_eq!(end_of_first_command_run(&['x', 'u'], is_cmd), Some(1));
        assert_eq!(end_of_first_command_run(&['u', 'x'], is_cmd), Some(2));
        assert_eq!(end_of_first_command_run::<char>(&[], is_cmd), None);
    }
}
