//! DNS lookups per second of one shard's resolver (src/dns), cold and warm:
//! `count` distinct names `h<i>.bench.test` looked up once each with up to
//! `concurrency` in flight (every one a cache miss: a query to the server),
//! then the same names again (every one a cache hit). Driven by
//! `perf/dnsbench`, which starts a private unbound serving the names.
//!
//! Usage: dnsbench SERVER:PORT COUNT CONCURRENCY

use std::rc::Rc;
use std::time::{Duration, Instant};

use ringpost::dns::{RecordKind, Resolver, ResolverParams};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 4 {
        eprintln!("usage: dnsbench SERVER:PORT COUNT CONCURRENCY");
        std::process::exit(2);
    }
    let server = ringpost::dns::parse_server(&args[1]).expect("server address");
    let count: usize = args[2].parse().expect("count");
    let concurrency: usize = args[3].parse().expect("concurrency");
    let handle = glommio::LocalExecutorBuilder::default()
        .spawn(move || async move {
            let params = ResolverParams {
                servers: vec![server],
                timeout: Duration::from_secs(2),
                queries_in_flight_max: concurrency.max(1),
                cache_entries_max: count * 2 + 16,
                ..ResolverParams::default()
            };
            let resolver = Rc::new(Resolver::new(params).expect("resolver"));
            let mut rates = Vec::new();
            for pass in ["cold", "warm"] {
                let started = Instant::now();
                let per_task = count.div_ceil(concurrency);
                let mut tasks = Vec::new();
                for t in 0..concurrency {
                    let resolver = resolver.clone();
                    tasks.push(glommio::spawn_local(async move {
                        let mut failures = 0usize;
                        for i in t * per_task..((t + 1) * per_task).min(count) {
                            if resolver.lookup(&format!("h{i}.bench.test"), RecordKind::A).await.is_err() {
                                failures += 1;
                            }
                        }
                        failures
                    }));
                }
                let mut failures = 0;
                for task in tasks {
                    failures += task.await;
                }
                let seconds = started.elapsed().as_secs_f64();
                rates.push(format!(
                    "{{\"pass\": \"{pass}\", \"lookups\": {count}, \"failures\": {failures}, \"seconds\": {seconds:.4}, \"per_s\": {:.0}}}",
                    count as f64 / seconds
                ));
            }
            let stats = resolver.stats();
            println!("{{\"passes\": [{}], \"udp_queries\": {}, \"cache_hits\": {}}}", rates.join(", "), stats.udp_queries_sent, stats.cache_hits);
        })
        .expect("executor");
    handle.join().expect("ran");
}
