//! RCPT decisions per second with users' Sieve scripts, in process: for
//! each address of a list, the RCPT policy (relay check and routers in
//! verify mode, as a session asks them) and then, with `[sieve]` in the
//! configuration, the recipient's script over the envelope
//! (`crate::ingress::filters`: the script file's stat, the compiled-script
//! cache, the evaluation), on one glommio executor. Driven by
//! `perf/sievebench/run`, which runs it with and without `[sieve]`.
//!
//! Usage: sievebench CONFIG ADDRESSES SENDER SECONDS

use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 5 {
        eprintln!("usage: sievebench CONFIG ADDRESSES SENDER SECONDS");
        std::process::exit(2);
    }
    let config = ringpost::config::load(Some(std::path::Path::new(&args[1])), &[]).expect("config loads");
    let engine = ringpost::route::Engine::build(&config).expect("routers build");
    let filters = ringpost::ingress::filters::Filters::open(&config).expect("filters open");
    let addresses: Vec<ringpost::smtp::address::Address> = std::fs::read_to_string(&args[2])
        .expect("address list")
        .lines()
        .map(|a| ringpost::smtp::address::parse_mailbox(a, false).expect("an address"))
        .collect();
    assert!(!addresses.is_empty(), "the address list is empty");
    let sender = args[3].clone();
    let seconds: f64 = args[4].parse().expect("seconds");
    let handle = glommio::LocalExecutorBuilder::default()
        .spawn(move || async move {
            let client: std::net::IpAddr = "192.0.2.1".parse().unwrap();
            let started = Instant::now();
            let limit = Duration::from_secs_f64(seconds);
            let (mut count, mut accepted) = (0u64, 0u64);
            'outer: loop {
                for address in &addresses {
                    let mut reply =
                        ringpost::ingress::policy::check_rcpt(&config, Some(&engine), None, client, address, &sender)
                            .await;
                    if let (Some(filters), true) = (&filters, reply.is_positive()) {
                        if let Some(user) = filters.local_user(&config, Some(&engine), address, &sender).await {
                            let mut txn = None;
                            if let Err(refusal) = filters.at_rcpt(&mut txn, address, user, &sender, client).await {
                                reply = refusal;
                            }
                        }
                    }
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
        "decisions={count} accepted={accepted} seconds={:.2} per_second={:.0}",
        elapsed.as_secs_f64(),
        count as f64 / elapsed.as_secs_f64()
    );
}
