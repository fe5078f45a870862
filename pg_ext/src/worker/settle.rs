//! Settling a batch once Redis answered: acknowledge (delete) what it applied, park what it
//! will never take, keep a refusing table's events (from its first refused one on) for a
//! later retry; and the batch bookkeeping around it.

use super::outbox::{self, Event, Kind, Scope};
use super::redis_sink::{Outcome, Planned};
use super::registry::{self, WorkerState};
use super::{ms, Worker};
use crate::gucs;
use pg_redis_shared::delivery;
use pgrx::prelude::*;
use std::collections::{HashMap, HashSet};
use std::time::Instant;

impl Worker {
    /// Deletes what Redis applied, parks what can never apply, keeps a refusing table's events
    /// (from its first refused one on, so per-key order holds) for a later retry.
    pub(super) fn settle(&mut self, events: &[Event], status: Vec<Result<(), String>>, outcomes: Vec<Outcome>) {
        let mut outcomes = outcomes.into_iter();
        let mut acked = Vec::new();
        let mut dead: Vec<(i64, String)> = Vec::new();
        let mut delivered: HashMap<Scope, i64> = HashMap::new();
        let mut errors: HashMap<Scope, String> = HashMap::new();
        let mut stuck_now: HashSet<Scope> = HashSet::new();
        for (e, p) in events.iter().zip(status) {
            let scope = self.scope_of(e);
            let outcome = match p {
                Ok(_) => outcomes.next().unwrap_or(Outcome::Refused("no reply".into())),
                Err(why) => {
                    errors.insert(scope, why.clone());
                    dead.push((e.id, why));
                    continue;
                }
            };
            // A table's events after its first refused one stay queued (per-key order; rows
            // are idempotent, so one already applied may be applied again). Queued commands are
            // not: one Redis ran is acknowledged whatever happened around it, one Redis will
            // never take is parked, and from the first one not run on, the rest wait in order.
            let commands = scope == Scope::Commands;
            let stuck = stuck_now.contains(&scope);
            match outcome {
                Outcome::Applied if stuck && !commands => {}
                Outcome::Applied => {
                    acked.push(e.ctid.clone());
                    *delivered.entry(scope).or_default() += 1;
                }
                Outcome::Refused(err) if commands && !delivery::is_transient(&err) => {
                    let why = format!("Redis refused the queued command: {err}");
                    errors.insert(scope, why.clone());
                    dead.push((e.id, why));
                }
                _ if stuck => {}
                // Discarded with its scope's MULTI/EXEC: it runs again, and what follows it waits.
                Outcome::NotRun(why) => {
                    let what = if commands { "the queued command" } else { "the change" };
                    errors.entry(scope).or_insert_with(|| format!("Redis did not run {what}: {why}"));
                    stuck_now.insert(scope);
                }
                Outcome::Refused(err) => {
                    errors.insert(scope, format!("Redis refused: {err}"));
                    stuck_now.insert(scope);
                }
            }
        }
        outbox::delete(&acked);
        outbox::dead_letter(&dead);
        for (scope, n) in &delivered {
            outbox::record_delivered(*scope, *n);
        }
        for (scope, err) in &errors {
            outbox::record_error(*scope, err);
            log!("pg_redis: {err}");
        }
        let (min, max, now) = (ms(gucs::RETRY_MIN_MS.get()), ms(gucs::RETRY_MAX_MS.get()), Instant::now());
        for scope in &stuck_now {
            self.stuck.entry(*scope).or_default().fail(now, min, max);
        }
        self.stuck.retain(|s, _| stuck_now.contains(s) || !delivered.contains_key(s));
        if let Some(err) = errors.values().next() {
            registry::set_state(self.dboid, WorkerState::Delivering, Some(err));
        }
    }
}

/// A batch on its way to Redis.
pub(super) struct Flight {
    pub(super) events: Vec<Event>,
    pub(super) status: Vec<Result<(), String>>,
}

impl Flight {
    /// Waits for Redis's answer and settles the batch.
    pub(super) fn wait(&self, w: &mut Worker) -> Result<(), pg_redis_shared::Error> {
        let outcomes = match &w.pipeline {
            Some(p) => p.wait()?,
            None => {
                return Err(pg_redis_shared::Error::Unavailable {
                    server: "Redis",
                    reason: "the pipeline thread stopped".into(),
                })
            }
        };
        w.backoff.succeed();
        w.settle(&self.events, self.status.clone(), outcomes);
        Ok(())
    }
}

/// Planned events to send, and per event whether it planned (or why not).
pub(super) fn split(planned: Vec<Result<Planned, String>>) -> (Vec<Planned>, Vec<Result<(), String>>) {
    let mut runnable = Vec::with_capacity(planned.len());
    let status = planned
        .into_iter()
        .map(|p| match p {
            Ok(p) => {
                runnable.push(p);
                Ok(())
            }
            Err(e) => Err(e),
        })
        .collect();
    (runnable, status)
}

/// Where the first run of queued commands in `events` ends (see [`delivery`]).
pub(super) fn end_of_first_command_run(events: &[Event]) -> Option<usize> {
    delivery::end_of_first_command_run(events, |e| e.kind == Kind::Command)
}
