//! Shards: one glommio executor per core, each owning its listeners (one
//! SO_REUSEPORT socket per `server.listen` address), its SMTP sessions, its
//! spool directory and its delivery engine. What they send each other is
//! callout requests, over bounded channels to the shard that owns the
//! recipient's domain (`crate::verify`). What they share is small and
//! bounded, behind atomics or short locks: the per-client table
//! (`crate::limits`), the counters by class (`crate::stats`) and the
//! replicas' state (`crate::scan::replicate::Held`).
//!
//! Place in the pipeline: the frame every other stage runs in. Task queues
//! set the shares of the core: SMTP sessions are latency-sensitive and get
//! the larger share; delivery and queue runners get a smaller one, so a
//! delivery backlog slows delivery, not the replies clients wait for.
//!
//! Shutdown: the process's SIGTERM/SIGINT flag is watched by every shard.
//! Phase `Draining`: listeners close, idle sessions get 421, sessions in a
//! transaction may finish it. After `server.drain_timeout`, phase `Closing`:
//! every remaining session gets 421 and unacknowledged transactions are
//! dropped. What was acknowledged is on disk and is delivered after restart.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use glommio::{Latency, LocalExecutorBuilder, Placement, Shares, TaskQueueHandle};

use crate::clock::Clock;
use crate::config::{BareLf, Config, Nul};
use crate::deliver::attempt::Deliverer;
use crate::deliver::engine::Delivery;
use crate::log;
use crate::queue::{Queue, QueueParams};
use crate::smtp::server::{BareLfPolicy, NulPolicy, ServerParams};
use queue_format::LogKind;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    Running,
    Draining,
    Closing,
}

/// Per-shard state, shared by the shard's tasks (never across threads).
/// The configuration, the SMTP machine's parameters, the TLS server
/// settings and the final-dot stages are replaced by a reload
/// (`crate::reload`, [`Shard::apply`]): a session or an attempt takes them
/// when it starts and keeps what it took.
pub struct Shard {
    pub index: usize,
    config: RefCell<Arc<Config>>,
    server_params: RefCell<Arc<ServerParams>>,
    pub queue: Rc<Queue>,
    pub delivery: Rc<Delivery>,
    /// The data-callout stages at the final dot.
    stages: RefCell<Rc<crate::scan::Stages>>,
    pub tq_smtp: TaskQueueHandle,
    pub tq_delivery: TaskQueueHandle,
    /// The server side of STARTTLS; None when `tls.cert` is unset.
    tls_server: RefCell<Option<Arc<rustls::ServerConfig>>>,
    /// Call-forward recipient verification.
    pub verifier: Rc<crate::verify::Verifier>,
    /// The replicas the node holds for its peer (shared by its shards).
    pub held: Arc<crate::scan::replicate::Held>,
    /// Per-client limits, one table for the process (`crate::limits`).
    pub limits: Arc<crate::limits::Limits>,
    /// The reload generation the shard runs with (`crate::reload`).
    generation: Cell<u64>,
    sessions_active: Cell<usize>,
    phase: Cell<Phase>,
    phase_event: event_listener::Event,
    session_event: event_listener::Event,
}

impl Shard {
    /// A shard's state from its parts (`task_queues`: SMTP, delivery).
    pub fn new(
        index: usize,
        config: Arc<Config>,
        queue: Rc<Queue>,
        delivery: Rc<Delivery>,
        stages: crate::scan::Stages,
        task_queues: [TaskQueueHandle; 2],
        tls_server: Option<Arc<rustls::ServerConfig>>,
        verifier: Rc<crate::verify::Verifier>,
        held: Arc<crate::scan::replicate::Held>,
    ) -> Shard {
        Shard {
            index,
            server_params: RefCell::new(Arc::new(server_params(&config))),
            limits: Arc::new(crate::limits::Limits::new(&config)),
            config: RefCell::new(config),
            queue,
            delivery,
            stages: RefCell::new(Rc::new(stages)),
            tq_smtp: task_queues[0],
            tq_delivery: task_queues[1],
            tls_server: RefCell::new(tls_server),
            verifier,
            held,
            generation: Cell::new(0),
            sessions_active: Cell::new(0),
            phase: Cell::new(Phase::Running),
            phase_event: event_listener::Event::new(),
            session_event: event_listener::Event::new(),
        }
    }

    /// The configuration new sessions start with.
    pub fn config(&self) -> Arc<Config> {
        self.config.borrow().clone()
    }

    /// The SMTP machine's parameters new sessions start with.
    pub fn server_params(&self) -> Arc<ServerParams> {
        self.server_params.borrow().clone()
    }

    /// The server side of STARTTLS for a session that asks now.
    pub fn tls_server(&self) -> Option<Arc<rustls::ServerConfig>> {
        self.tls_server.borrow().clone()
    }

    /// The final-dot stages for a message that ends now.
    pub fn stages(&self) -> Rc<crate::scan::Stages> {
        self.stages.borrow().clone()
    }

    /// Takes the newest reload's settings if the shard has not yet: the
    /// configuration, the SMTP parameters, the TLS server settings, the
    /// stages (scanners, email authentication, early delivery) and the
    /// delivery side's configuration (transports). The reload checked that
    /// they build; a stage that fails here anyway keeps the running stages.
    pub fn apply_reload(&self) {
        if crate::reload::generation() == self.generation.get() {
            return;
        }
        let Some(live) = crate::reload::current() else { return };
        if live.generation == self.generation.get() {
            return;
        }
        let config = live.config.clone();
        match build_stages(&config, &self.queue, self.delivery.deliverer(), self.stages().replicator_rc()) {
            Ok(stages) => *self.stages.borrow_mut() = Rc::new(stages),
            Err(e) => log::event("reload_stages_failed", &[("shard", &self.index), ("error", &e)]),
        }
        *self.server_params.borrow_mut() = Arc::new(server_params(&config));
        *self.tls_server.borrow_mut() = live.tls_server.clone();
        self.delivery.set_config(config.clone());
        if self.index == 0 {
            // One table for the process: the first shard sets its limits.
            self.limits.reconfigure(&config);
        }
        *self.config.borrow_mut() = config;
        self.generation.set(live.generation);
        crate::reload::applied(&live);
    }

    /// The process's per-client table in place of the unshared one `new`
    /// starts with.
    pub fn with_limits(mut self, limits: Arc<crate::limits::Limits>) -> Shard {
        self.limits = limits;
        self
    }

    pub fn phase(&self) -> Phase {
        self.phase.get()
    }

    /// A future that completes at the next phase change. Take it before
    /// checking the phase, so that no change is missed.
    pub fn phase_listener(&self) -> event_listener::EventListener {
        self.phase_event.listen()
    }

    pub fn set_phase(&self, phase: Phase) {
        assert!(phase > self.phase.get(), "phases only move forward");
        self.phase.set(phase);
        self.phase_event.notify(usize::MAX);
    }

    /// Sessions open on this shard.
    pub fn sessions_active(&self) -> usize {
        self.sessions_active.get()
    }

    pub fn session_started(&self) {
        crate::metrics::SESSIONS.inc();
        crate::metrics::SESSIONS_OPEN.inc();
        let count = self.sessions_active.get().checked_add(1).expect("session count overflow");
        self.sessions_active.set(count);
    }

    pub fn session_ended(&self) {
        crate::metrics::SESSIONS_OPEN.dec();
        let count = self.sessions_active.get().checked_sub(1).expect("session count below zero");
        self.sessions_active.set(count);
        self.session_event.notify(usize::MAX);
    }

    /// Waits until no session is left or the deadline passes.
    async fn sessions_gone(&self, deadline: Instant) -> bool {
        loop {
            let listener = self.session_event.listen();
            if self.sessions_active.get() == 0 {
                return true;
            }
            let wait = deadline.saturating_duration_since(Instant::now());
            if wait.is_zero() {
                return false;
            }
            let timer = async {
                glommio::timer::sleep(wait).await;
            };
            futures_lite::future::or(listener, timer).await;
        }
    }
}

/// The SMTP machine's parameters, from the configuration.
pub fn server_params(config: &Config) -> ServerParams {
    ServerParams {
        hostname: config.server.hostname.clone(),
        greeting: config.smtp.greeting.clone(),
        max_recipients: config.smtp.max_recipients,
        max_message_bytes: config.smtp.max_message_bytes,
        max_text_line_bytes: config.smtp.max_text_line_bytes,
        max_errors: config.smtp.max_errors,
        command_timeout: config.smtp.command_timeout.0,
        data_timeout: config.smtp.data_timeout.0,
        bare_lf: match config.smtp.bare_lf {
            BareLf::Reject => BareLfPolicy::Reject,
            BareLf::Normalize => BareLfPolicy::Normalize,
        },
        nul: match config.smtp.nul {
            Nul::Reject => NulPolicy::Reject,
            Nul::Strip => NulPolicy::Strip,
        },
        starttls: config.tls.cert.is_some() && config.tls.key.is_some(),
    }
}

/// Runs every shard until `stop` is set and they have drained. With
/// `identity` (from `server.user`), the listeners and the control socket
/// are bound first, the spool and the socket given to that user, and the
/// process becomes it before any shard starts (`crate::privdrop`).
pub fn run(
    config: Arc<Config>,
    stop: Arc<AtomicBool>,
    identity: Option<crate::privdrop::Identity>,
) -> Result<(), String> {
    let shard_count = config.shard_count();
    let cpus: Vec<usize> =
        glommio::CpuSet::online().map(|set| set.into_iter().map(|l| l.cpu).collect()).unwrap_or_default();
    log::event(
        "start",
        &[
            ("shards", &shard_count),
            ("pin", &config.server.pin),
            ("listen", &format!("{:?}", config.all_listeners().iter().map(|l| l.address).collect::<Vec<_>>())),
        ],
    );
    let dns = crate::dns::params_for(&config.dns).map_err(|e| format!("cannot read /etc/resolv.conf: {e}"))?;
    dns.validate().map_err(|e| format!("dns: {e}"))?;
    let tls_server = crate::reload::tls_server(&config)?;
    crate::reload::start(config.clone(), tls_server.clone());
    let start = Start { dns, tls_server, tls_client: crate::tls::client_config() };
    let replicating = config.replicate.peer.is_some() || !config.replicate.accept_from.is_empty();
    if replicating && shard_count > crate::scan::replicate::REPLICATION_SHARDS_MAX {
        return Err(format!(
            "[replicate] needs at most {} shards, not {shard_count}",
            crate::scan::replicate::REPLICATION_SHARDS_MAX
        ));
    }
    let held = crate::scan::replicate::Held::new(shard_count, Clock::System.unix_ms());
    // A broken access table stops the start with its file and key.
    crate::access::install(Arc::new(crate::access::Access::open(&config.policy)?));
    // A `before` script that does not compile stops the start likewise.
    crate::ingress::filters::install(crate::ingress::filters::Filters::open(&config)?.map(Arc::new));
    let limits = Arc::new(crate::limits::Limits::new(&config));
    // Every shard's sockets, bound here while the process may still bind
    // ports below 1024; each shard takes its own and listens on it.
    let addresses: Vec<std::net::SocketAddr> = config.all_listeners().iter().map(|l| l.address).collect();
    let mut listeners = bind_listeners(&addresses, shard_count)?.into_iter();
    // The AUTH back end's workers, shared by every shard (crate::sasl).
    let sasl = match &config.sasl {
        Some(sasl) => Some(Arc::new(crate::sasl::Sasl::open(sasl)?)),
        None => None,
    };
    crate::sasl::install(sasl);
    let control_path = config.control_socket_path();
    if let (Some(identity), Some(dir)) = (&identity, control_path.parent()) {
        crate::privdrop::prepare_dir(dir, identity).map_err(|e| format!("control socket {e}"))?;
    }
    // A metrics address that was asked for and cannot be bound stops the start.
    let metrics = match config.metrics.listen {
        Some(addr) => Some(crate::metrics::http::start(addr)?),
        None => None,
    };
    // Without its control socket the server still takes mail.
    let (admin_senders, admin_inboxes) = crate::control::admin_channels(shard_count);
    let mut admin_inboxes = admin_inboxes.into_iter();
    let control = match crate::control::start(&control_path, admin_senders) {
        Ok(control) => Some(control),
        Err(e) => {
            log::event("control_socket_error", &[("error", &e)]);
            None
        }
    };
    if let Some(identity) = &identity {
        let socket = control.as_ref().map(|_| control_path.as_path());
        let dropped = crate::privdrop::start_pipe_helper(&config, identity)
            .and_then(|()| crate::privdrop::hand_over(&config, socket, identity))
            .and_then(|()| crate::privdrop::become_user(identity));
        if let Err(e) = dropped {
            if let Some(control) = control {
                control.stop();
            }
            return Err(e);
        }
        log::event("privileges_dropped", &[("user", &identity.name), ("uid", &identity.uid), ("gid", &identity.gid)]);
    }
    // The last shard to run its accept loops tells the service manager.
    let unready = Arc::new(std::sync::atomic::AtomicUsize::new(shard_count));
    let mut meshes = crate::verify::mesh(shard_count).into_iter();
    let mut handles = Vec::with_capacity(shard_count);
    for index in 0..shard_count {
        let mesh = meshes.next().expect("one mesh end per shard");
        let admin = admin_inboxes.next().expect("one queue-command channel per shard");
        let placement = if config.server.pin && !cpus.is_empty() {
            Placement::Fixed(cpus[index % cpus.len()])
        } else {
            Placement::Unbound
        };
        let (config, start, stop, held) = (config.clone(), start.clone(), stop.clone(), held.clone());
        let (limits, unready) = (limits.clone(), unready.clone());
        let shard_listeners = listeners.next().expect("listeners bound for every shard");
        let handle = LocalExecutorBuilder::new(placement)
            .name(&format!("shard-{index}"))
            .io_memory(2 << 20)
            .blocking_thread_pool_placement(glommio::PoolPlacement::Unbound(blocking_threads(&config)))
            .spawn(move || async move {
                let ready = Ready { listeners: shard_listeners, unready, limits };
                shard_main(index, config, start, stop, mesh, held, ready, admin).await
            })
            .map_err(|e| format!("cannot start shard {index}: {e}"))?;
        handles.push(handle);
    }
    let mut first_error = None;
    for handle in handles {
        match handle.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(e) => {
                first_error.get_or_insert(format!("shard failed: {e}"));
            }
        }
    }
    if let Some(control) = control {
        control.stop();
    }
    if let Some(metrics) = metrics {
        metrics.stop();
    }
    crate::control::log_totals();
    match first_error {
        None => Ok(()),
        Some(e) => Err(e),
    }
}

/// `count` sockets for each of `addresses`, each bound with SO_REUSEPORT
/// (so the kernel spreads connections over the shards' sockets) but not
/// yet listening: binding is what needs root for a port below 1024, and a
/// socket joins its port's group, and gets connections, only when its
/// shard calls `listen` once its queue is open. The outer vector has one
/// entry per shard.
fn bind_listeners(addresses: &[std::net::SocketAddr], count: usize) -> Result<Vec<Vec<BoundSocket>>, String> {
    use socket2::{Domain, Protocol, Socket, Type};
    let mut shards = Vec::with_capacity(count);
    for _ in 0..count {
        let mut sockets = Vec::with_capacity(addresses.len());
        for addr in addresses {
            let bound = Socket::new(Domain::for_address(*addr), Type::STREAM, Some(Protocol::TCP)).and_then(|socket| {
                socket.set_reuse_port(true)?;
                socket.bind(&(*addr).into())?;
                Ok(socket)
            });
            let socket = bound.map_err(|e| format!("cannot listen on {addr}: {e}"))?;
            sockets.push(BoundSocket { addr: *addr, socket });
        }
        shards.push(sockets);
    }
    Ok(shards)
}

/// A shard's socket for one `server.listen` address, bound by `run`.
struct BoundSocket {
    addr: std::net::SocketAddr,
    socket: socket2::Socket,
}

impl BoundSocket {
    /// Starts listening and hands the socket to the shard's executor.
    fn listen(self) -> std::io::Result<glommio::net::TcpListener> {
        use std::os::fd::{FromRawFd, IntoRawFd};
        self.socket.listen(LISTEN_BACKLOG)?;
        let fd = std::net::TcpListener::from(self.socket).into_raw_fd();
        // SAFETY: `fd` is a bound, listening TCP socket whose ownership
        // moves into glommio's listener here.
        Ok(unsafe { glommio::net::TcpListener::from_raw_fd(fd) })
    }
}

/// The backlog of each listening socket.
const LISTEN_BACKLOG: i32 = 1024;

/// What `run` hands one shard: its sockets, already bound; the count of
/// shards not yet taking connections; the process's per-client table.
struct Ready {
    listeners: Vec<BoundSocket>,
    unready: Arc<std::sync::atomic::AtomicUsize>,
    limits: Arc<crate::limits::Limits>,
}

/// Threads of a shard's pool for blocking work: pipe scanners (each scan
/// holds a thread while its program runs), pipe and Maildir deliveries,
/// SQLite lookups. glommio's default of one would run a shard's pipe scans
/// one at a time, whatever their `max_concurrent`, and make every other
/// blocking job wait behind a slow scan.
fn blocking_threads(config: &Config) -> usize {
    let scans: usize =
        config.scanners.iter().filter(|s| s.kind == crate::config::ScannerKind::Pipe).map(|s| s.max_concurrent).sum();
    (BLOCKING_THREADS_BASE + scans).min(BLOCKING_THREADS_MAX)
}

/// Blocking threads per shard besides those of the pipe scanners.
const BLOCKING_THREADS_BASE: usize = 4;
/// Blocking threads per shard at most.
const BLOCKING_THREADS_MAX: usize = 512;

/// The final-dot stages of `config`: email authentication, the content
/// scanners, early delivery and replication (which a reload keeps).
fn build_stages(
    config: &Config,
    queue: &Rc<Queue>,
    deliverer: &Rc<Deliverer>,
    replicator: Option<Rc<crate::scan::replicate::Replicator>>,
) -> Result<crate::scan::Stages, String> {
    let auth = crate::auth::Auth::new(config, deliverer.clone(), queue.clone())?;
    Ok(crate::scan::Stages::new(
        Some(crate::scan::scanners::Scanners::new(config, queue.clone())),
        crate::scan::early::EarlyDelivery::new(deliverer.clone(), config.delivery.early_ms),
        replicator,
    )
    .with_auth(auth.map(Rc::new)))
}

/// What every shard starts with, read once by `run`.
#[derive(Clone)]
struct Start {
    dns: crate::dns::ResolverParams,
    tls_server: Option<Arc<rustls::ServerConfig>>,
    tls_client: Arc<rustls::ClientConfig>,
}

async fn shard_main(
    index: usize,
    config: Arc<Config>,
    start: Start,
    stop: Arc<AtomicBool>,
    mesh: crate::verify::MeshEnd,
    held: Arc<crate::scan::replicate::Held>,
    ready: Ready,
    admin: futures_channel::mpsc::Receiver<crate::control::AdminRequest>,
) -> Result<(), String> {
    let Ready { listeners, unready, limits } = ready;
    let Start { dns, tls_server, tls_client } = start;
    let executor = glommio::executor();
    let tq_smtp = executor.create_task_queue(Shares::Static(1000), Latency::Matters(Duration::from_millis(5)), "smtp");
    let tq_delivery = executor.create_task_queue(Shares::Static(250), Latency::NotImportant, "delivery");
    let spool = config.spool_for_shard(index).to_path_buf();
    let queue = Queue::open(&spool, index as u16, QueueParams::from_config(&config), Clock::System)
        .await
        .map_err(|e| format!("shard {index}: cannot open spool {}: {e}", spool.display()))?;
    let deliverer = Rc::new(Deliverer::new(config.clone(), queue.clone(), index, dns, tls_client)?);
    let replicator = crate::scan::replicate::Replicator::new(&config, deliverer.clone());
    let delivery = Rc::new(
        Delivery::new(config.clone(), queue.clone(), deliverer.clone())
            .with_replication(held.clone(), replicator.clone()),
    );
    let stages =
        build_stages(&config, &queue, &deliverer, replicator.clone()).map_err(|e| format!("shard {index}: {e}"))?;
    // Replication's own tasks: the notifier telling the peer what finished
    // here, and the completer removing replicas the peer finished.
    let replication_stop = Rc::new(Cell::new(false));
    let notifier_task = match &replicator {
        Some(replicator) => Some(
            glommio::spawn_local_into(replicator.clone().run_notifier(replication_stop.clone()), tq_delivery)
                .map_err(|e| format!("shard {index}: {e}"))?,
        ),
        None => None,
    };
    let completer_task = glommio::spawn_local_into(
        crate::scan::replicate::run_completer(queue.clone(), held.clone(), index, replication_stop.clone()),
        tq_delivery,
    )
    .map_err(|e| format!("shard {index}: {e}"))?;
    let verifier =
        Rc::new(crate::verify::Verifier::new(index, config.clone(), deliverer.clone(), Clock::System, Some(mesh)));
    let verifier_task =
        glommio::spawn_local_into(verifier.clone().serve(), tq_smtp).map_err(|e| format!("shard {index}: {e}"))?;
    let recovered = queue.handoff_counts().0;
    // The queue's own tasks: a committer per log next to the sessions it
    // acknowledges; the collector and the retry runners with delivery.
    let mut queue_tasks = Vec::new();
    for kind in [LogKind::Head, LogKind::Retry] {
        let task = glommio::spawn_local_into(queue.clone().run_committer(kind), tq_smtp)
            .map_err(|e| format!("shard {index}: {e}"))?;
        queue_tasks.push(task);
    }
    let collector = glommio::spawn_local_into(queue.clone().run_collector(), tq_delivery)
        .map_err(|e| format!("shard {index}: {e}"))?;
    let mut runner_tasks = Vec::new();
    for runner in 0..queue.params().retry_lags.len() {
        let task = glommio::spawn_local_into(queue.clone().run_runner(runner), tq_delivery)
            .map_err(|e| format!("shard {index}: {e}"))?;
        runner_tasks.push(task);
    }
    let mut accepting = Vec::with_capacity(listeners.len());
    for bound in listeners {
        let addr = bound.addr;
        accepting.push(bound.listen().map_err(|e| format!("shard {index}: cannot listen on {addr}: {e}"))?);
    }
    let listeners = accepting;
    let shard = Rc::new(
        Shard::new(index, config, queue, delivery, stages, [tq_smtp, tq_delivery], tls_server, verifier, held)
            .with_limits(limits),
    );
    log::event("shard_ready", &[("shard", &index), ("recovered", &recovered)]);
    let mut accept_tasks = Vec::new();
    let roles = crate::ingress::listener::Listening::all(&shard.config(), shard.server_params());
    assert_eq!(roles.len(), listeners.len(), "one socket for each listener");
    for (listener, role) in listeners.into_iter().zip(roles) {
        let role = Rc::new(role);
        let task = glommio::spawn_local_into(crate::ingress::accept_loop(shard.clone(), listener, role), tq_smtp)
            .map_err(|e| format!("shard {index}: {e}"))?;
        accept_tasks.push(task);
    }
    if unready.fetch_sub(1, Ordering::AcqRel) == 1 {
        if let Err(e) = crate::notify::notify("READY=1") {
            log::event("notify_error", &[("error", &e)]);
        }
    }
    // Back from a stop or a crash: the peer says which messages it took
    // over meanwhile before delivery sends any of them again.
    if let Some(replicator) = shard.stages().replicator() {
        replicator.greet_peer().await;
    }
    let delivery_task = glommio::spawn_local_into(shard.delivery.clone().run(shard.clone()), tq_delivery)
        .map_err(|e| format!("shard {index}: {e}"))?;
    let sweep_task = glommio::spawn_local_into(shard.delivery.clone().sweep_connections(shard.clone()), tq_delivery)
        .map_err(|e| format!("shard {index}: {e}"))?;
    // Queue commands from the control socket, served until the shard
    // closes (the task is dropped there: the control thread outlives it).
    let admin_task = glommio::spawn_local_into(shard.delivery.clone().serve_admin(admin), tq_delivery)
        .map_err(|e| format!("shard {index}: {e}"))?;

    while !stop.load(Ordering::Relaxed) {
        glommio::timer::sleep(Duration::from_millis(crate::reload::SHARD_TICK_MS)).await;
        shard.apply_reload();
    }
    log::event("drain", &[("shard", &index), ("sessions", &shard.sessions_active.get())]);
    shard.set_phase(Phase::Draining);
    for task in accept_tasks {
        task.await;
    }
    let drain_deadline = Instant::now() + shard.config().server.drain_timeout.0;
    if !shard.sessions_gone(drain_deadline).await {
        shard.set_phase(Phase::Closing);
        shard.sessions_gone(Instant::now() + Duration::from_secs(5)).await;
    } else {
        shard.set_phase(Phase::Closing);
    }
    // No session asks for callouts any more: the other shards' requests
    // end here, and this shard's inbox ends when theirs close too.
    shard.verifier.close();
    verifier_task.await;
    drop(admin_task);
    shard.verifier.log_stats();
    delivery_task.await;
    shard.delivery.wait_idle(Instant::now() + Duration::from_secs(10)).await;
    sweep_task.await;
    // The last finished messages are told to the peer before the outbound
    // connections close.
    replication_stop.set(true);
    if let Some(task) = notifier_task {
        task.await;
    }
    completer_task.await;
    shard.delivery.close_connections().await;
    // Records staged by the last attempts are flushed before the committers end.
    shard.queue.close();
    for task in queue_tasks {
        task.await;
    }
    collector.await;
    for task in runner_tasks {
        task.await;
    }
    for kind in [LogKind::Head, LogKind::Retry] {
        let stats = shard.queue.stats(kind);
        log::event(
            "commit_stats",
            &[
                ("shard", &index),
                ("log", &crate::queue::log::kind_name(kind)),
                ("flushes", &stats.flushes),
                ("records", &stats.records),
                ("bytes", &stats.bytes),
                ("failures", &stats.failures),
                ("batch_records", &stats.histogram_text()),
            ],
        );
    }
    log::event("stopped", &[("shard", &index)]);
    Ok(())
}
