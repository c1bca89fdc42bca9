//! Bounded pools of blocking workers for back ends that are not async
//! (PostgreSQL, LDAP): at most `max_connections` worker threads, each with
//! at most one open connection (opened when first needed, opened again
//! after an error), a wait queue of at most `queue_max` lookups, and a
//! `timeout` per lookup counted from the request. A slow or dead back end
//! therefore costs a 451 4.3.0 at RCPT within the timeout, never a hang,
//! and only the lookups of that pool: every source has its own.
//!
//! Place in the pipeline: behind `route::source::LookupSource` for the
//! network lookup sources; the routers put their TTL cache in front.
//!
//! The shard hands a lookup to the pool over a bounded crossbeam channel
//! and awaits the answer on a oneshot channel; when its timeout passes it
//! stops waiting (the worker finishes the query and its answer is dropped).
//! A worker that takes a job whose requester has already given up skips it.

pub mod ldap;
pub mod postgres;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::route::source::{LookupError, LookupFuture, LookupResult, LookupSource};

/// Most workers (and so connections) one pool may have.
pub const MAX_CONNECTIONS_MAX: usize = 256;
/// Most lookups one pool may queue.
pub const QUEUE_MAX_MAX: usize = 100_000;

/// Limits of one pool (`[pool.<name>]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolParams {
    /// Worker threads, each with at most one connection. Default 4.
    pub max_connections: usize,
    /// Lookups waiting for a worker; one more is refused at once. Default 64.
    pub queue_max: usize,
    /// Longest a lookup waits for its answer, queue included. Default 5 s.
    pub timeout: Duration,
}

impl Default for PoolParams {
    fn default() -> PoolParams {
        PoolParams { max_connections: 4, queue_max: 64, timeout: Duration::from_secs(5) }
    }
}

/// A blocking connection to a back end, used by one worker at a time.
pub trait Backend: Send {
    /// The value for `key`, or None. An `Err` drops the connection; the
    /// next lookup opens a new one.
    fn lookup(&mut self, key: &str) -> LookupResult;
}

/// Opens a connection for a worker.
pub type Connect = Box<dyn Fn() -> Result<Box<dyn Backend>, String> + Send + Sync>;

struct Job {
    key: String,
    /// The requester stops waiting at this instant.
    deadline: Instant,
    reply: futures_channel::oneshot::Sender<LookupResult>,
}

/// Counters of one pool.
#[derive(Debug, Default)]
pub struct PoolStats {
    pub lookups: AtomicU64,
    pub refused_queue_full: AtomicU64,
    pub timeouts: AtomicU64,
    pub errors: AtomicU64,
    pub connects: AtomicU64,
}

/// A pool with its workers. Dropping it closes the queue; the workers end
/// after their current query.
pub struct Pool {
    description: String,
    params: PoolParams,
    jobs: crossbeam::channel::Sender<Job>,
    stats: Arc<PoolStats>,
}

impl Pool {
    /// Starts `params.max_connections` workers that open connections with
    /// `connect` when they first need one.
    pub fn start(description: String, params: PoolParams, connect: Connect) -> Pool {
        assert!(params.max_connections >= 1 && params.max_connections <= MAX_CONNECTIONS_MAX);
        assert!(params.queue_max <= QUEUE_MAX_MAX);
        let (jobs, receiver) = crossbeam::channel::bounded::<Job>(params.queue_max);
        let stats = Arc::new(PoolStats::default());
        let connect = Arc::new(connect);
        for index in 0..params.max_connections {
            let receiver = receiver.clone();
            let connect = connect.clone();
            let stats = stats.clone();
            let description = description.clone();
            std::thread::Builder::new()
                .name(format!("pool-{index}"))
                .spawn(move || worker(receiver, &*connect, &stats, &description))
                .expect("a pool worker thread starts");
        }
        Pool { description, params, jobs, stats }
    }

    pub fn stats(&self) -> &PoolStats {
        &self.stats
    }

    /// Looks `key` up: queued for a worker (refused at once when the queue
    /// is full), answered within `timeout` or given up on.
    pub async fn lookup(&self, key: &str) -> LookupResult {
        self.stats.lookups.fetch_add(1, Ordering::Relaxed);
        let (reply, answer) = futures_channel::oneshot::channel();
        let deadline = Instant::now() + self.params.timeout;
        let job = Job { key: key.to_string(), deadline, reply };
        if let Err(e) = self.jobs.try_send(job) {
            self.stats.refused_queue_full.fetch_add(1, Ordering::Relaxed);
            let why = match e {
                crossbeam::channel::TrySendError::Full(_) => "busy (lookup queue full)",
                crossbeam::channel::TrySendError::Disconnected(_) => "closed",
            };
            return Err(LookupError::Temporary(format!("{}: {why}", self.description)));
        }
        let waited = glommio::timer::timeout(self.params.timeout, async {
            Ok(answer.await.unwrap_or_else(|_| Err(LookupError::Temporary("lookup worker ended".to_string()))))
        })
        .await;
        match waited {
            Ok(result) => result,
            Err(_) => {
                self.stats.timeouts.fetch_add(1, Ordering::Relaxed);
                Err(LookupError::Temporary(format!(
                    "{}: no answer within {} ms",
                    self.description,
                    self.params.timeout.as_millis()
                )))
            }
        }
    }
}

fn worker(receiver: crossbeam::channel::Receiver<Job>, connect: &Connect, stats: &PoolStats, description: &str) {
    let mut connection: Option<Box<dyn Backend>> = None;
    while let Ok(job) = receiver.recv() {
        if Instant::now() >= job.deadline || job.reply.is_canceled() {
            continue;
        }
        if connection.is_none() {
            stats.connects.fetch_add(1, Ordering::Relaxed);
            match connect() {
                Ok(c) => connection = Some(c),
                Err(e) => {
                    stats.errors.fetch_add(1, Ordering::Relaxed);
                    let _ = job.reply.send(Err(LookupError::Temporary(format!("{description}: {e}"))));
                    continue;
                }
            }
        }
        let backend = connection.as_mut().expect("connected above");
        let result = backend.lookup(&job.key);
        if let Err(LookupError::Temporary(_)) = &result {
            stats.errors.fetch_add(1, Ordering::Relaxed);
            connection = None;
        }
        let _ = job.reply.send(result);
    }
}

/// A pooled source as the routers see it.
struct PooledSource {
    pool: Pool,
}

impl LookupSource for PooledSource {
    fn lookup<'a>(&'a self, key: &'a str) -> LookupFuture<'a> {
        Box::pin(self.pool.lookup(key))
    }

    fn describe(&self) -> String {
        self.pool.description.clone()
    }
}

/// Opens a `postgres:URL` or `ldap:URL` source with its query, behind a
/// pool of its own.
pub fn open_source(spec: &str, query: &str, params: &PoolParams) -> Result<Arc<dyn LookupSource>, String> {
    let (description, connect): (String, Connect) = if let Some(url) = spec.strip_prefix("postgres:") {
        postgres::connector(url, query)?
    } else if let Some(url) = spec.strip_prefix("ldap:") {
        ldap::connector(url, query)?
    } else {
        return Err(format!("unknown source {spec:?}: expected sqlite:PATH, postgres:URL or ldap:URL"));
    };
    Ok(Arc::new(PooledSource { pool: Pool::start(description, params.clone(), connect) }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A back end that sleeps `delay` and answers "value-of-KEY", or fails
    /// for the key "fail".
    struct Fake {
        delay: Duration,
    }

    impl Backend for Fake {
        fn lookup(&mut self, key: &str) -> LookupResult {
            std::thread::sleep(self.delay);
            match key {
                "fail" => Err(LookupError::Temporary("backend failed".into())),
                "missing" => Ok(None),
                _ => Ok(Some(format!("value-of-{key}"))),
            }
        }
    }

    fn fake_pool(delay: Duration, params: PoolParams) -> Pool {
        Pool::start("fake".into(), params, Box::new(move || Ok(Box::new(Fake { delay }) as Box<dyn Backend>)))
    }

    fn on_executor<F, Fut>(f: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + 'static,
    {
        glommio::LocalExecutorBuilder::default().spawn(f).unwrap().join().unwrap()
    }

    #[test]
    fn answers_misses_and_errors() {
        on_executor(|| async {
            {
                let one_worker = PoolParams { max_connections: 1, ..PoolParams::default() };
                let pool = fake_pool(Duration::ZERO, one_worker);
                assert_eq!(pool.lookup("a").await, Ok(Some("value-of-a".into())));
                assert_eq!(pool.lookup("missing").await, Ok(None));
                assert!(matches!(pool.lookup("fail").await, Err(LookupError::Temporary(_))));
                // The worker connected again after the error.
                assert_eq!(pool.lookup("b").await, Ok(Some("value-of-b".into())));
                assert_eq!(pool.stats().connects.load(Ordering::Relaxed), 2);
            }
        });
    }

    #[test]
    fn a_slow_backend_times_out_and_a_full_queue_refuses_at_once() {
        on_executor(|| async {
            {
                let params = PoolParams { max_connections: 1, queue_max: 1, timeout: Duration::from_millis(200) };
                let pool = std::rc::Rc::new(fake_pool(Duration::from_millis(1000), params));
                let started = Instant::now();
                // One lookup busies the only worker, one waits in the queue,
                // the third finds the queue full.
                let p1 = pool.clone();
                let first = glommio::spawn_local(async move { p1.lookup("x").await });
                glommio::timer::sleep(Duration::from_millis(20)).await;
                let p2 = pool.clone();
                let second = glommio::spawn_local(async move { p2.lookup("y").await });
                glommio::timer::sleep(Duration::from_millis(20)).await;
                let third = pool.lookup("z").await;
                assert!(matches!(&third, Err(LookupError::Temporary(t)) if t.contains("queue full")), "{third:?}");
                assert!(started.elapsed() < Duration::from_millis(150), "refused at once");
                for result in [first.await, second.await] {
                    assert!(matches!(&result, Err(LookupError::Temporary(t)) if t.contains("no answer within 200 ms")), "{result:?}");
                }
                assert!(started.elapsed() < Duration::from_millis(600), "within the timeout, not the back end's delay");
                assert_eq!(pool.stats().timeouts.load(Ordering::Relaxed), 2);
            }
        });
    }
}
