//! RCPT verifications per second of the routing engine, in process: the
//! routers of a configuration file verify each address of a list (one per
//! line) in turn, on one glommio executor, as a session does at RCPT.
//! Driven by `perf/routebench/run`.
//!
//! Usage: routebench CONFIG ADDRESSES SECONDS

use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: routebench CONFIG ADDRESSES SECONDS");
        std::process::exit(2);
    }
    let config = ringpost::config::load(Some(std::path::Path::new(&args[1])), &[]).expect("config loads");
    let engine = ringpost::route::Engine::build(&config).expect("routers build");
    let addresses: Vec<String> =
        std::fs::read_to_string(&args[2]).expect("address list").lines().map(str::to_string).collect();
    assert!(!addresses.is_empty(), "the address list is empty");
    let seconds: f64 = args[3].parse().expect("seconds");
    let handle = glommio::LocalExecutorBuilder::default()
        .spawn(move || async move {
            let started = Instant::now();
            let limit = Duration::from_secs_f64(seconds);
            let (mut count, mut accepted) = (0u64, 0u64);
            'outer: loop {
                for address in &addresses {
                    let reply = engine.route(address, "", ringpost::route::Mode::Verify).await.decision.verify_reply();
                    count += 1;
                    accepted += u64::from(reply.is_positive());
                    if count % 256 == 0 && started.elapsed() >= limit {
                        break 'outer;
                    }
                }
            }
            (count, accepted, started.elapsed())
        })
        .expect("executor");
    let (count, accepted, elapsed) = handle.join().expect("bench ran");
    println!(
        "verifications={count} accepted={accepted} seconds={:.2} per_second={:.0}",
        elapsed.as_secs_f64(),
        count as f64 / elapsed.as_secs_f64()
    );
}
