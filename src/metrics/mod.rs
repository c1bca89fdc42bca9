//! Prometheus metrics: process-wide counters, gauges and latency
//! histograms that the shards update as they work, and their encoding in
//! the Prometheus text exposition format (`prometheus-client`), served by
//! [`http`] at `GET /metrics` when `metrics.listen` is set.
//!
//! Place in the pipeline: beside everything, owned by nothing. Sessions,
//! the queue's committers, the delivery engine, the outbound connection
//! cache, the resolver, callouts and scanners each add to a static here
//! with one call that is one relaxed atomic add (a histogram's
//! observation is two: its bucket and its sum), with no lock and no
//! allocation; the responder's thread reads them all at scrape time. The
//! counters by class of `crate::stats` are read from there, not counted
//! twice. `docs/metrics.md` lists every metric.
//!
//! Latencies are Prometheus histograms with fixed buckets rather than
//! HDR histograms or summaries: recording into an HDR histogram needs
//! `&mut` (a lock, or a copy per shard merged under one), while a fixed
//! bucket is one atomic add, and buckets from several servers can be
//! summed by Prometheus where quantiles cannot.

pub mod http;

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Instant;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::stats::{self, Class};

/// A monotonic count, alone on its cache line.
#[repr(align(64))]
pub struct Counter(AtomicU64);

impl Counter {
    pub const fn new() -> Counter {
        Counter(AtomicU64::new(0))
    }

    #[inline]
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    #[inline]
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Default for Counter {
    fn default() -> Counter {
        Counter::new()
    }
}

/// A value that goes up and down (moved by deltas, so shards never
/// overwrite each other's share), alone on its cache line.
#[repr(align(64))]
pub struct Gauge(AtomicI64);

impl Gauge {
    pub const fn new() -> Gauge {
        Gauge(AtomicI64::new(0))
    }

    #[inline]
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    #[inline]
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }

    #[inline]
    pub fn add(&self, delta: i64) {
        self.0.fetch_add(delta, Ordering::Relaxed);
    }

    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Default for Gauge {
    fn default() -> Gauge {
        Gauge::new()
    }
}

/// Counters under one label, one per fixed label value.
pub struct Family<const N: usize> {
    label: &'static str,
    values: [&'static str; N],
    counters: [Counter; N],
}

impl<const N: usize> Family<N> {
    pub const fn new(label: &'static str, values: [&'static str; N]) -> Family<N> {
        Family { label, values, counters: [const { Counter::new() }; N] }
    }

    /// Counts one event under the label value at `index` (out of range: the last).
    #[inline]
    pub fn inc(&self, index: usize) {
        self.counters[index.min(N - 1)].inc();
    }

    /// Counts one event under label value `value`; an unknown value is
    /// counted under the last one.
    pub fn inc_named(&self, value: &str) {
        let index = self.values.iter().position(|v| *v == value).unwrap_or(N - 1);
        self.counters[index].inc();
    }

    pub fn get(&self, value: &str) -> u64 {
        self.values.iter().position(|v| *v == value).map_or(0, |i| self.counters[i].get())
    }
}

/// Most buckets a [`Histogram`] has (its bounds and +Inf).
const BUCKETS_MAX: usize = 24;

/// A Prometheus histogram with fixed upper bounds (inclusive, in the
/// histogram's integer unit: microseconds for latencies), one counter per
/// bucket and a sum; the count is the buckets' total.
pub struct Histogram {
    bounds: &'static [u64],
    /// What one unit is in the exposed unit (1e-6: microseconds to seconds).
    scale: f64,
    buckets: [AtomicU64; BUCKETS_MAX],
    sum: AtomicU64,
}

/// Latency bounds in microseconds: 100 µs to 2 minutes.
pub const LATENCY_BOUNDS_US: &[u64] = &[
    100,
    250,
    500,
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    30_000_000,
    60_000_000,
    120_000_000,
];
/// Records-per-flush bounds: powers of two to 1024.
pub const RECORDS_BOUNDS: &[u64] = &[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024];

impl Histogram {
    /// `bounds` ascending, fewer than [`BUCKETS_MAX`].
    pub const fn new(bounds: &'static [u64], scale: f64) -> Histogram {
        assert!(bounds.len() < BUCKETS_MAX);
        Histogram { bounds, scale, buckets: [const { AtomicU64::new(0) }; BUCKETS_MAX], sum: AtomicU64::new(0) }
    }

    /// A latency histogram (microseconds, exposed in seconds).
    pub const fn latency() -> Histogram {
        Histogram::new(LATENCY_BOUNDS_US, 1e-6)
    }

    #[inline]
    pub fn observe(&self, value: u64) {
        let index = self.bounds.partition_point(|&bound| bound < value);
        self.buckets[index].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
    }

    /// Observes the time since `started`, in microseconds.
    #[inline]
    pub fn since(&self, started: Instant) {
        self.observe(started.elapsed().as_micros().min(u64::MAX as u128) as u64);
    }

    /// (upper bound in the exposed unit, count in that bucket alone) for
    /// every bound and +Inf, the count, and the sum in the exposed unit.
    pub fn snapshot(&self) -> (Vec<(f64, u64)>, u64, f64) {
        let mut buckets = Vec::with_capacity(self.bounds.len() + 1);
        let mut count = 0u64;
        for (i, bucket) in self.buckets[..=self.bounds.len()].iter().enumerate() {
            let n = bucket.load(Ordering::Relaxed);
            count = count.saturating_add(n);
            let bound = self.bounds.get(i).map_or(f64::INFINITY, |&b| b as f64 * self.scale);
            buckets.push((bound, n));
        }
        (buckets, count, self.sum.load(Ordering::Relaxed) as f64 * self.scale)
    }
}

// ---- the metrics ----

/// SMTP sessions open now.
pub static SESSIONS_OPEN: Gauge = Gauge::new();
/// SMTP sessions started.
pub static SESSIONS: Counter = Counter::new();
/// RCPT commands answered with 2xx.
pub static RECIPIENTS_ACCEPTED: Counter = Counter::new();
/// Message content octets received (after the 354, before any stage).
pub static RECEIVED_BYTES: Counter = Counter::new();
/// From the final dot to the 250 (commit, stages, scripts).
pub static FINAL_DOT_LATENCY: Histogram = Histogram::latency();

/// Live messages in the queues' indexes.
pub static QUEUE_MESSAGES: Gauge = Gauge::new();
/// Live messages whose newest envelope is in a retry log (attempted and deferred).
pub static QUEUE_DEFERRED: Gauge = Gauge::new();
/// Live messages with a body file of their own.
pub static QUEUE_BODY_FILES: Gauge = Gauge::new();
/// Segment files of the logs.
pub static QUEUE_SEGMENTS: Gauge = Gauge::new();
/// Segment files of the body logs.
pub static QUEUE_BODY_LOG_SEGMENTS: Gauge = Gauge::new();
/// Body bytes appended to the body logs.
pub static QUEUE_BODY_LOG_BYTES: Counter = Counter::new();
/// Bytes of the logs' segment files (allocated at full size).
pub static QUEUE_LOG_BYTES: Gauge = Gauge::new();
/// Log flushes (one write and one fdatasync), by log.
pub static QUEUE_FLUSHES: Family<2> = Family::new("log", ["head", "retry"]);
/// Failed log flushes, by log.
pub static QUEUE_FLUSH_FAILURES: Family<2> = Family::new("log", ["head", "retry"]);
/// Bytes written by the log flushes.
pub static QUEUE_WRITTEN_BYTES: Counter = Counter::new();
/// Body files flushed by the head log's committer, together with the
/// others of their batch.
pub static QUEUE_BODY_SYNCS: Counter = Counter::new();
/// Records in each flush.
pub static QUEUE_FLUSH_RECORDS: Histogram = Histogram::new(RECORDS_BOUNDS, 1.0);
/// A flush's write and fdatasync.
pub static QUEUE_COMMIT_LATENCY: Histogram = Histogram::latency();

/// Delivery attempts of a message (all its pending recipients).
pub static DELIVERY_ATTEMPTS: Counter = Counter::new();
/// Delivery attempts in progress.
pub static DELIVERY_ACTIVE: Gauge = Gauge::new();
/// What became of each recipient of an attempt.
pub static DELIVERY_RECIPIENTS: Family<4> =
    Family::new("result", ["delivered", "deferred", "failed", "delivered_early"]);
/// One delivery attempt, from taking the message to the last reply.
pub static DELIVERY_LATENCY: Histogram = Histogram::latency();
/// Outbound SMTP connections open now (idle ones included).
pub static OUTBOUND_OPEN: Gauge = Gauge::new();
/// Outbound SMTP connections opened.
pub static OUTBOUND_OPENED: Counter = Counter::new();
/// Transactions sent over a kept connection instead of a new one.
pub static OUTBOUND_REUSED: Counter = Counter::new();

/// Recipients verified by callout, by the answer given at RCPT.
pub static CALLOUTS: Family<4> = Family::new("result", ["accept", "reject", "defer", "busy"]);
/// Callout answers taken from a shard's cache.
pub static CALLOUT_CACHE_HITS: Counter = Counter::new();
/// Content scans, by outcome.
pub static SCANS: Family<6> = Family::new("result", ["accept", "reject", "tempfail", "failed", "busy", "skipped"]);

/// Lookups asked of the resolvers.
pub static DNS_LOOKUPS: Counter = Counter::new();
/// Lookups (or CNAME steps) answered from a resolver's cache.
pub static DNS_CACHE_HITS: Counter = Counter::new();
/// Questions sent on the wire, by result.
pub static DNS_QUERIES: Family<2> = Family::new("result", ["answer", "error"]);
/// One question on the wire, from the first datagram to the answer.
pub static DNS_QUERY_LATENCY: Histogram = Histogram::latency();

/// Moves the queue gauges by one index entry's share (`sign` 1 when it
/// appears, -1 when it goes).
#[inline]
pub fn queue_entry(sign: i64, deferred: bool, body_file: bool) {
    QUEUE_MESSAGES.add(sign);
    if deferred {
        QUEUE_DEFERRED.add(sign);
    }
    if body_file {
        QUEUE_BODY_FILES.add(sign);
    }
}

/// [`queue_entry`] for many entries at once (recovery): `messages` of
/// which `deferred` deferred and `body_files` with a body file.
pub fn queue_entries(messages: i64, deferred: i64, body_files: i64) {
    QUEUE_MESSAGES.add(messages);
    QUEUE_DEFERRED.add(deferred);
    QUEUE_BODY_FILES.add(body_files);
}

/// Held by an outbound connection while it is open.
pub struct OpenConnection(());

impl OpenConnection {
    pub fn new() -> OpenConnection {
        OUTBOUND_OPEN.inc();
        OpenConnection(())
    }
}

impl Default for OpenConnection {
    fn default() -> OpenConnection {
        OpenConnection::new()
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        OUTBOUND_OPEN.dec();
    }
}

// ---- encoding ----

/// Every metric, read from the statics at each scrape.
#[derive(Debug)]
struct Statics;

fn counter(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> Result<(), std::fmt::Error> {
    ConstCounter::new(value).encode(encoder.encode_descriptor(name, help, None, MetricType::Counter)?)
}

fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: i64) -> Result<(), std::fmt::Error> {
    ConstGauge::new(value).encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

fn family<const N: usize>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    family: &Family<N>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (value, counter) in family.values.iter().zip(&family.counters) {
        let labels = [(family.label, *value)];
        ConstCounter::new(counter.get()).encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

fn histogram(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    histogram: &Histogram,
) -> Result<(), std::fmt::Error> {
    let (buckets, count, sum) = histogram.snapshot();
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
    metric.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
}

impl Collector for Statics {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let e = &mut e;
        gauge(e, "ringpost_sessions_open", "SMTP sessions open now", SESSIONS_OPEN.get())?;
        counter(e, "ringpost_sessions", "SMTP sessions started", SESSIONS.get())?;
        let totals = stats::snapshot();
        let mut classes = e.encode_descriptor(
            "ringpost_messages",
            "Connections, recipients and messages by what became of them (the classes of ringpost stats)",
            None,
            MetricType::Counter,
        )?;
        for (class, total) in Class::ALL.iter().zip(totals) {
            let labels = [("class", class.name())];
            ConstCounter::new(total).encode(classes.encode_family(&labels)?)?;
        }
        counter(e, "ringpost_recipients_accepted", "RCPT commands answered with 2xx", RECIPIENTS_ACCEPTED.get())?;
        counter(e, "ringpost_received_bytes", "Message content octets received", RECEIVED_BYTES.get())?;
        histogram(
            e,
            "ringpost_final_dot_to_250_seconds",
            "Time from a message's final dot to its 250 reply",
            &FINAL_DOT_LATENCY,
        )?;

        gauge(e, "ringpost_queue_messages", "Live messages in the queue", QUEUE_MESSAGES.get())?;
        gauge(e, "ringpost_queue_deferred", "Live messages waiting in a retry log", QUEUE_DEFERRED.get())?;
        gauge(e, "ringpost_queue_body_files", "Live messages with a body file", QUEUE_BODY_FILES.get())?;
        gauge(e, "ringpost_queue_segments", "Segment files of the queue logs", QUEUE_SEGMENTS.get())?;
        gauge(e, "ringpost_queue_log_bytes", "Bytes of the queue logs' segment files", QUEUE_LOG_BYTES.get())?;
        gauge(e, "ringpost_queue_body_log_segments", "Segment files of the body logs", QUEUE_BODY_LOG_SEGMENTS.get())?;
        counter(
            e,
            "ringpost_queue_body_log_bytes",
            "Body bytes appended to the body logs",
            QUEUE_BODY_LOG_BYTES.get(),
        )?;
        family(e, "ringpost_queue_flushes", "Queue log flushes (write and fdatasync)", &QUEUE_FLUSHES)?;
        family(e, "ringpost_queue_flush_failures", "Queue log flushes that failed", &QUEUE_FLUSH_FAILURES)?;
        counter(e, "ringpost_queue_written_bytes", "Bytes written by queue log flushes", QUEUE_WRITTEN_BYTES.get())?;
        counter(e, "ringpost_queue_body_syncs", "Body files flushed with their batch", QUEUE_BODY_SYNCS.get())?;
        histogram(e, "ringpost_queue_flush_records", "Records per queue log flush", &QUEUE_FLUSH_RECORDS)?;
        histogram(
            e,
            "ringpost_queue_commit_seconds",
            "Time of one queue log flush (write and fdatasync)",
            &QUEUE_COMMIT_LATENCY,
        )?;

        counter(e, "ringpost_delivery_attempts", "Delivery attempts of a message", DELIVERY_ATTEMPTS.get())?;
        gauge(e, "ringpost_delivery_attempts_active", "Delivery attempts in progress", DELIVERY_ACTIVE.get())?;
        family(e, "ringpost_delivery_recipients", "Recipients of delivery attempts by result", &DELIVERY_RECIPIENTS)?;
        histogram(e, "ringpost_delivery_attempt_seconds", "Time of one delivery attempt", &DELIVERY_LATENCY)?;
        gauge(e, "ringpost_outbound_connections_open", "Outbound SMTP connections open now", OUTBOUND_OPEN.get())?;
        counter(e, "ringpost_outbound_connections_opened", "Outbound SMTP connections opened", OUTBOUND_OPENED.get())?;
        counter(
            e,
            "ringpost_outbound_connections_reused",
            "Transactions sent over a kept outbound connection",
            OUTBOUND_REUSED.get(),
        )?;

        family(e, "ringpost_callouts", "Recipient verification callouts by answer", &CALLOUTS)?;
        counter(e, "ringpost_callout_cache_hits", "Callout answers from the cache", CALLOUT_CACHE_HITS.get())?;
        family(e, "ringpost_scans", "Content scans by outcome", &SCANS)?;

        counter(e, "ringpost_dns_lookups", "DNS lookups asked of the resolvers", DNS_LOOKUPS.get())?;
        counter(e, "ringpost_dns_cache_hits", "DNS lookups answered from the cache", DNS_CACHE_HITS.get())?;
        family(e, "ringpost_dns_queries", "DNS questions sent on the wire by result", &DNS_QUERIES)?;
        histogram(e, "ringpost_dns_query_seconds", "Time of one DNS question on the wire", &DNS_QUERY_LATENCY)?;
        Ok(())
    }
}

/// The body of a scrape: every metric in the Prometheus text format.
pub fn encode() -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Statics));
    let mut out = String::with_capacity(16 * 1024);
    if prometheus_client::encoding::prometheus_text::encode(&mut out, &registry).is_err() {
        // Writing to a String does not fail; a collector error leaves a
        // truncated body, which the comment makes visible.
        let _ = writeln!(out, "# encoding failed");
    }
    out
}

/// The `Content-Type` of [`encode`]'s text.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the sample line `name` (with its labels, as written).
    fn sample(text: &str, name: &str) -> Option<f64> {
        text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    }

    #[test]
    fn histogram_buckets_are_inclusive_and_cumulative_when_encoded() {
        static H: Histogram = Histogram::new(&[10, 100], 1.0);
        for v in [0, 10, 11, 100, 101, 5000] {
            H.observe(v);
        }
        let (buckets, count, sum) = H.snapshot();
        assert_eq!(buckets, vec![(10.0, 2), (100.0, 2), (f64::INFINITY, 2)]);
        assert_eq!(count, 6);
        assert_eq!(sum, 5222.0);
        let latency = Histogram::latency();
        latency.observe(1_500);
        let (buckets, _, sum) = latency.snapshot();
        assert_eq!(buckets.iter().find(|(_, n)| *n == 1).map(|(b, _)| *b), Some(0.0025));
        assert!((sum - 0.0015).abs() < 1e-12);
    }

    #[test]
    fn every_metric_is_encoded_with_its_type_and_labels() {
        SESSIONS.inc();
        stats::count(Class::RelayAttempt);
        QUEUE_FLUSHES.inc(1);
        DELIVERY_RECIPIENTS.inc_named("failed");
        DELIVERY_RECIPIENTS.inc_named("no such result");
        FINAL_DOT_LATENCY.observe(3_000);
        let text = encode();
        assert!(text.contains("# TYPE ringpost_sessions_total counter\n"), "{text}");
        assert!(text.contains("# TYPE ringpost_sessions_open gauge\n"));
        assert!(text.contains("# TYPE ringpost_final_dot_to_250_seconds histogram\n"));
        assert!(sample(&text, "ringpost_sessions_total").is_some_and(|v| v >= 1.0));
        assert!(sample(&text, "ringpost_messages_total{class=\"relay_attempt\"}").is_some_and(|v| v >= 1.0));
        for class in Class::ALL {
            let name = format!("ringpost_messages_total{{class=\"{}\"}}", class.name());
            assert!(sample(&text, &name).is_some(), "{name}");
        }
        assert!(sample(&text, "ringpost_queue_flushes_total{log=\"retry\"}").is_some_and(|v| v >= 1.0));
        assert!(sample(&text, "ringpost_delivery_recipients_total{result=\"failed\"}").is_some_and(|v| v >= 1.0));
        assert!(
            sample(&text, "ringpost_delivery_recipients_total{result=\"delivered_early\"}").is_some_and(|v| v >= 1.0)
        );
        assert!(sample(&text, "ringpost_final_dot_to_250_seconds_bucket{le=\"+Inf\"}").is_some_and(|v| v >= 1.0));
        assert!(sample(&text, "ringpost_final_dot_to_250_seconds_count").is_some_and(|v| v >= 1.0));
        assert!(text.contains("ringpost_final_dot_to_250_seconds_bucket{le=\"0.005\"}"));
        // Buckets are cumulative: each at least the one before.
        let buckets: Vec<f64> = text
            .lines()
            .filter(|l| l.starts_with("ringpost_dns_query_seconds_bucket"))
            .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
            .collect();
        assert_eq!(buckets.len(), LATENCY_BOUNDS_US.len() + 1);
        assert!(buckets.windows(2).all(|w| w[0] <= w[1]));
        // One HELP and one TYPE per metric, every sample line a name and a number.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let value = line.rsplit(' ').next().unwrap_or("");
            assert!(value.parse::<f64>().is_ok(), "{line}");
            assert!(line.starts_with("ringpost_"), "{line}");
        }
    }

    #[test]
    fn a_scrape_is_cheap() {
        let started = Instant::now();
        let mut bytes = 0;
        for _ in 0..100 {
            bytes = encode().len();
        }
        let each = started.elapsed() / 100;
        eprintln!("one scrape: {each:?}, {bytes} bytes");
        assert!(bytes < 32 * 1024, "{bytes} bytes");
        assert!(each < std::time::Duration::from_millis(5), "{each:?}");
    }

    #[test]
    fn gauges_move_by_deltas_and_families_by_label() {
        let gauge = Gauge::new();
        gauge.inc();
        gauge.add(5);
        gauge.dec();
        gauge.add(-2);
        assert_eq!(gauge.get(), 3);
        // An open connection counts while it lives (other tests may hold
        // some too, so only its own share is certain).
        let open = OpenConnection::new();
        assert!(OUTBOUND_OPEN.get() >= 1);
        drop(open);
        let family: Family<2> = Family::new("x", ["a", "b"]);
        family.inc(0);
        family.inc(5);
        family.inc_named("b");
        family.inc_named("unknown");
        assert_eq!((family.get("a"), family.get("b"), family.get("c")), (1, 3, 0));
    }
}
