//! Load: open loop at a fixed rate (latency of each request from its own send, lateness of the
//! sender recorded apart so a stalled generator is visible), and closed loop at saturation.

use std::future::Future;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::task::JoinSet;

/// Latencies of one phase, in microseconds.
#[derive(Debug)]
pub struct Latencies {
    /// Each successful request's latency.
    pub histogram: Histogram<u64>,
    /// How late each request left against its schedule (the generator's own stalls).
    pub lateness: Histogram<u64>,
    /// Requests that failed or answered other than expected.
    pub errors: u64,
}

impl Latencies {
    /// No samples yet.
    pub fn new() -> Latencies {
        Latencies {
            histogram: histogram(),
            lateness: histogram(),
            errors: 0,
        }
    }

    /// The `q` quantile in milliseconds.
    pub fn ms(&self, q: f64) -> f64 {
        self.histogram.value_at_quantile(q) as f64 / 1000.0
    }

    /// Requests that succeeded.
    pub fn count(&self) -> u64 {
        self.histogram.len()
    }

    /// Records one outcome.
    pub fn record(&mut self, outcome: Result<Duration, String>) {
        match outcome {
            Ok(latency) => self.histogram.saturating_record(micros(latency)),
            Err(_) => self.errors += 1,
        }
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// Sends `call(i)` at `rate` per second for `duration`, each on its own task so that a slow
/// answer never delays the next send.
pub async fn open_loop<F, Fut>(rate: u32, duration: Duration, call: F) -> Latencies
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let interval = Duration::from_secs(1) / rate;
    let count = u64::from(rate) * duration.as_secs().max(1);
    let start = Instant::now();
    let mut tasks = JoinSet::new();
    let mut latencies = Latencies::new();
    for i in 0..count {
        let scheduled = start + interval * u32::try_from(i).unwrap_or(u32::MAX);
        tokio::time::sleep_until(scheduled.into()).await;
        let sent = Instant::now();
        latencies
            .lateness
            .saturating_record(micros(sent.saturating_duration_since(scheduled)));
        let request = call(i);
        tasks.spawn(async move {
            request.await?;
            Ok(sent.elapsed())
        });
        while let Some(done) = tasks.try_join_next() {
            latencies.record(done.map_err(|e| e.to_string()).and_then(|r| r));
        }
    }
    while let Some(done) = tasks.join_next().await {
        latencies.record(done.map_err(|e| e.to_string()).and_then(|r| r));
    }
    latencies
}

/// Runs `concurrency` loops of `call` for `duration`; returns completed calls per second and the
/// number of failures.
pub async fn closed_loop<F, Fut>(concurrency: usize, duration: Duration, call: F) -> (f64, u64)
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<(), String>> + Send,
{
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = JoinSet::new();
    for worker in 0..concurrency {
        let call = call.clone();
        tasks.spawn(async move {
            let (mut done, mut failed) = (0u64, 0u64);
            let mut i = worker as u64 * 1_000_000_000;
            while Instant::now() < deadline {
                match call(i).await {
                    Ok(()) => done += 1,
                    Err(_) => failed += 1,
                }
                i += 1;
            }
            (done, failed)
        });
    }
    let (mut done, mut failed) = (0, 0);
    while let Some(Ok((d, f))) = tasks.join_next().await {
        done += d;
        failed += f;
    }
    (done as f64 / start.elapsed().as_secs_f64(), failed)
}

/// Runs `call` `count` times one after the other; the latency of each.
pub async fn sequential<F, Fut>(count: u64, call: F) -> Latencies
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let mut latencies = Latencies::new();
    for i in 0..count {
        let sent = Instant::now();
        let outcome = call(i).await.map(|()| sent.elapsed());
        latencies.record(outcome);
    }
    latencies
}
