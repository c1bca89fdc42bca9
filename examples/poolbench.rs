//! Lookups per second through one pool (src/pool) against a real back end,
//! with many lookups in flight, and the share answered Temporary (what
//! becomes 451 at RCPT); a task refused comes back after 10 ms, as a
//! client would later. Driven by `perf/poolbench`.
//!
//! Usage: poolbench SPEC QUERY CONNECTIONS QUEUE_MAX TIMEOUT_MS IN_FLIGHT SECONDS

use std::rc::Rc;
use std::time::{Duration, Instant};

use ringpost::pool::{open_source, PoolParams};
use ringpost::route::source::LookupError;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 8 {
        eprintln!("usage: poolbench SPEC QUERY CONNECTIONS QUEUE_MAX TIMEOUT_MS IN_FLIGHT SECONDS");
        std::process::exit(2);
    }
    let params = PoolParams {
        max_connections: args[3].parse().expect("connections"),
        queue_max: args[4].parse().expect("queue_max"),
        timeout: Duration::from_millis(args[5].parse().expect("timeout_ms")),
    };
    let in_flight: usize = args[6].parse().expect("in flight");
    let seconds: f64 = args[7].parse().expect("seconds");
    let (spec, query) = (args[1].clone(), args[2].clone());
    let handle = glommio::LocalExecutorBuilder::default()
        .spawn(move || async move {
            let source = Rc::new(open_source(&spec, &query, &params).expect("source opens"));
            let started = Instant::now();
            let limit = Duration::from_secs_f64(seconds);
            let mut tasks = Vec::new();
            for t in 0..in_flight {
                let source = source.clone();
                tasks.push(glommio::spawn_local(async move {
                    let (mut ok, mut temporary, mut other) = (0u64, 0u64, 0u64);
                    let mut i = 0u64;
                    while started.elapsed() < limit {
                        let key = if (t as u64 + i) % 2 == 0 { "ann" } else { "nobody" };
                        match source.lookup(key).await {
                            Ok(_) => ok += 1,
                            Err(LookupError::Temporary(_)) => {
                                temporary += 1;
                                // A client refused with 451 comes back later,
                                // not in a tight loop.
                                glommio::timer::sleep(Duration::from_millis(10)).await;
                            }
                            Err(_) => other += 1,
                        }
                        i += 1;
                    }
                    (ok, temporary, other)
                }));
            }
            let (mut ok, mut temporary, mut other) = (0u64, 0u64, 0u64);
            for task in tasks {
                let (a, b, c) = task.await;
                ok += a;
                temporary += b;
                other += c;
            }
            let elapsed = started.elapsed().as_secs_f64();
            println!(
                "{{\"answered\": {ok}, \"temporary\": {temporary}, \"other\": {other}, \"seconds\": {elapsed:.3}, \"per_s\": {:.0}, \"answered_per_s\": {:.0}, \"temporary_share\": {:.4}}}",
                (ok + temporary + other) as f64 / elapsed,
                ok as f64 / elapsed,
                temporary as f64 / (ok + temporary + other).max(1) as f64
            );
        })
        .expect("executor");
    handle.join().expect("ran");
}
