//! Riding through outages: a step that failed because PostgreSQL or RabbitMQ was away is tried
//! again, with capped, jittered exponential pauses, until it works, until PostgreSQL refuses the
//! rows (a [`Fault::Refused`] is final at once), or until the patience runs out. One definition of "try again", so the upload, the commit, the redrive and the
//! worker pace themselves alike.
//!
//! Time is tokio's ([`tokio::time::Instant`], [`tokio::time::sleep`]): the same as the wall clock
//! in a running process, and a clock the tests can pause and move on.

use crate::fault::Fault;
use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::time::Duration;
use tokio::time::Instant;

/// How long to keep trying, and how long to pause at most between two tries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Patience {
    /// Give up once this much time has passed since the first failure (`Duration::MAX`: never).
    pub budget: Duration,
    /// The longest pause between two tries (the pauses double from a tenth of a second up to it).
    pub max_pause: Duration,
}

impl Patience {
    /// Tries for at most `budget`, pausing at most `max_pause`.
    pub fn new(budget: Duration, max_pause: Duration) -> Patience {
        Patience { budget, max_pause }
    }

    /// Tries until it works (for loops that must never give up, such as a worker holding a
    /// delivery; they stop on shutdown instead).
    pub fn endless(max_pause: Duration) -> Patience {
        Patience::new(Duration::MAX, max_pause)
    }

    /// The pauses between tries: doubling from 100 ms (or `max_pause`, if shorter), capped at
    /// `max_pause`, with jitter so that many processes do not retry in step; never ending.
    pub fn pauses(&self) -> impl Iterator<Item = Duration> + use<> {
        let max_pause = self.max_pause;
        backoff(max_pause).map(move |pause| pause.min(max_pause))
    }
}

/// Pauses doubling from 100 ms (or `max_pause`, if shorter) up to `max_pause`, jittered (the
/// jitter may add up to one pause: callers cap it).
fn backoff(max_pause: Duration) -> ExponentialBackoff {
    ExponentialBuilder::default()
        .with_min_delay(max_pause.min(Duration::from_millis(100)))
        .with_max_delay(max_pause)
        .with_jitter()
        .without_max_times()
        .build()
}

/// Runs `step` until it succeeds, is refused, or `patience.budget` has passed since its first
/// outage; every retry is logged with `what`, its attempt number and the reason. The last outage
/// is returned when the patience ran out.
///
/// `step` makes a fresh future for each try (`move || async move { … }` over references and
/// copies); an async closure would be neater, but its future cannot yet be proven `Send`.
pub async fn ride_through<T, Step>(
    patience: Patience,
    what: &str,
    mut step: impl FnMut() -> Step,
) -> Result<T, Fault>
where
    Step: Future<Output = Result<T, Fault>>,
{
    let mut pauses = patience.pauses();
    let mut first_outage: Option<Instant> = None;
    let mut attempt = 1u32;
    loop {
        let reason = match step().await {
            Ok(value) => {
                if attempt > 1 {
                    tracing::info!(what, attempt, "recovered from an outage");
                }
                return Ok(value);
            }
            Err(refused @ Fault::Refused(_)) => return Err(refused),
            Err(Fault::Outage(reason)) => reason,
        };
        let since = *first_outage.get_or_insert_with(Instant::now);
        let pause = pauses.next().unwrap_or(patience.max_pause);
        if since.elapsed().saturating_add(pause) > patience.budget {
            tracing::warn!(what, attempt, %reason, "outage outlasted the patience; giving up");
            return Err(Fault::Outage(reason));
        }
        tracing::warn!(what, attempt, %reason, ?pause, "outage; trying again");
        tokio::time::sleep(pause).await;
        attempt += 1;
    }
}

/// Paces steps that a loop tries again on its next passes (rather than in place), one schedule
/// per key: after an outage the key is not due again until its pause has passed; the pauses grow
/// like [`Patience::pauses`]. A success forgets the key.
#[derive(Debug)]
pub struct Retries<K> {
    max_pause: Duration,
    waiting: HashMap<K, Retry>,
}

/// One key's schedule.
#[derive(Debug)]
struct Retry {
    attempt: u32,
    due: Instant,
    pauses: ExponentialBackoff,
}

impl<K: Eq + Hash + Copy> Retries<K> {
    /// No key waiting; pauses of at most `max_pause`.
    pub fn new(max_pause: Duration) -> Retries<K> {
        Retries {
            max_pause,
            waiting: HashMap::new(),
        }
    }

    /// True when `key` may be tried now.
    pub fn is_due(&self, key: K) -> bool {
        self.waiting
            .get(&key)
            .is_none_or(|retry| Instant::now() >= retry.due)
    }

    /// Notes an outage of `key`'s step; returns its attempt number (from 1).
    pub fn failed(&mut self, key: K) -> u32 {
        let max_pause = self.max_pause;
        let retry = self.waiting.entry(key).or_insert_with(|| Retry {
            attempt: 0,
            due: Instant::now(),
            pauses: backoff(max_pause),
        });
        retry.attempt += 1;
        let pause = retry.pauses.next().unwrap_or(max_pause).min(max_pause);
        retry.due = Instant::now() + pause;
        retry.attempt
    }

    /// Forgets `key` (its step worked, or it needs no more tries).
    pub fn forget(&mut self, key: K) {
        self.waiting.remove(&key);
    }

    /// Forgets every key `keep` says no to.
    pub fn retain(&mut self, mut keep: impl FnMut(K) -> bool) {
        self.waiting.retain(|key, _| keep(*key));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn pauses_grow_to_the_cap_and_never_end() {
        let patience = Patience::new(Duration::from_secs(60), Duration::from_millis(800));
        let pauses: Vec<Duration> = patience.pauses().take(50).collect();
        assert_eq!(pauses.len(), 50);
        assert!(pauses
            .iter()
            .all(|pause| *pause <= Duration::from_millis(800)));
        assert!(pauses[0] >= Duration::from_millis(100));
        assert!(pauses[40] >= Duration::from_millis(400), "{pauses:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_outage_is_retried_until_it_passes() {
        let patience = Patience::new(Duration::from_secs(10), Duration::from_millis(20));
        let calls = AtomicU32::new(0);
        let calls = &calls;
        let started = Instant::now();
        let result = ride_through(patience, "test", move || async move {
            let call = calls.fetch_add(1, Ordering::SeqCst) + 1;
            if call < 4 {
                Err(Fault::outage("away"))
            } else {
                Ok(call)
            }
        })
        .await;
        assert_eq!(result, Ok(4));
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(60) && waited <= Duration::from_millis(60 + 1),
            "three pauses of 20 ms (the cap) between the four tries: {waited:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_is_final_at_once() {
        let patience = Patience::new(Duration::from_secs(10), Duration::from_millis(20));
        let calls = AtomicU32::new(0);
        let calls = &calls;
        let started = Instant::now();
        let result: Result<(), Fault> = ride_through(patience, "test", move || async move {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(Fault::Refused("no".into()))
        })
        .await;
        assert_eq!(result, Err(Fault::Refused("no".into())));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(
            started.elapsed(),
            Duration::ZERO,
            "no pause before a refusal"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_key_waits_its_pause_and_a_success_forgets_it() {
        let mut retries = Retries::new(Duration::from_secs(60));
        assert!(retries.is_due(7));
        assert_eq!(retries.failed(7), 1);
        assert_eq!(retries.failed(7), 2);
        assert!(
            !retries.is_due(7),
            "a pause of at least 100 ms follows an outage"
        );
        tokio::time::advance(Duration::from_millis(99)).await;
        assert!(!retries.is_due(7), "not yet due after 99 ms");
        assert!(retries.is_due(8));
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(retries.is_due(7), "due once the longest pause has passed");
        assert_eq!(retries.failed(7), 3, "the schedule goes on until forgotten");
        retries.forget(7);
        assert!(retries.is_due(7));
        assert_eq!(retries.failed(7), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_outage_longer_than_the_patience_gives_up() {
        let budget = Duration::from_secs(30);
        let max_pause = Duration::from_secs(5);
        let patience = Patience::new(budget, max_pause);
        let calls = AtomicU32::new(0);
        let calls = &calls;
        let started = Instant::now();
        let result: Result<(), Fault> = ride_through(patience, "test", move || async move {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(Fault::outage("away"))
        })
        .await;
        assert_eq!(result, Err(Fault::outage("away")));
        let waited = started.elapsed();
        assert!(waited <= budget, "never past the budget: {waited:?}");
        assert!(
            waited > budget - max_pause,
            "gives up only when the next pause would pass the budget: {waited:?}"
        );
        assert!(calls.load(Ordering::SeqCst) > 2);
    }
}
