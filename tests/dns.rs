//! The resolver and the mail routing lookup against a real DNS server:
//! each test starts its own unbound on 127.0.0.1 and a free port, with a
//! private configuration file serving a `test.` zone (MX records, a null
//! MX, a domain without MX, NXDOMAIN, CNAME chains and a loop, a REFUSED
//! zone, and an answer too big for UDP so the TCP fallback runs). The
//! system's unbound service is not used. Skips, saying so, when the unbound
//! binary is missing (tests/run installs it).

use std::fmt::Write as _;
use std::future::Future;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use glommio::{LocalExecutorBuilder, Placement};
use ringpost::dns::query::{self, Question, RECORD_COUNT_MAX};
use ringpost::dns::{mx, Lookup, RecordData, RecordKind, ResolveError, Resolver, ResolverParams, RouteError};
use ringpost::dns::{MxRecord, CNAME_CHAIN_LENGTH_MAX};
use ringpost::smtp::reply::Enhanced;

/// Addresses in the big answer: more than 1232 bytes over UDP.
const BIG_RECORD_COUNT: usize = 100;
/// Names answered NXDOMAIN in the many-in-flight test.
const MANY_QUERY_COUNT: usize = 200;

fn zone() -> String {
    let mut zone = String::from(
        r#"    local-zone: "test." static
    local-data: "test. 3600 IN SOA ns.test. admin.test. 1 3600 600 86400 300"
    local-data: "mail.test. 300 IN MX 20 mx2.mail.test."
    local-data: "mail.test. 300 IN MX 10 mx1.mail.test."
    local-data: "mx1.mail.test. 300 IN A 127.0.0.11"
    local-data: "mx2.mail.test. 300 IN A 127.0.0.12"
    local-data: "mx2.mail.test. 300 IN AAAA ::1"
    local-data: "nomail.test. 300 IN MX 0 ."
    local-data: "nomail.test. 300 IN A 127.0.0.13"
    local-data: "plain.test. 300 IN A 127.0.0.14"
    local-data: "alias.test. 300 IN CNAME step1.test."
    local-data: "step1.test. 60 IN CNAME step2.test."
    local-data: "step2.test. 300 IN MX 5 mx1.mail.test."
    local-data: "loop1.test. 300 IN CNAME loop2.test."
    local-data: "loop2.test. 300 IN CNAME loop1.test."
    local-data: "deadmx.test. 300 IN MX 10 gone.test."
    local-zone: "refused.test." refuse
"#,
    );
    for i in 0..BIG_RECORD_COUNT {
        writeln!(zone, "    local-data: \"big.test. 300 IN A 127.0.1.{}\"", i + 1).unwrap();
    }
    zone
}

/// A private unbound, killed and cleaned up when dropped.
struct Unbound {
    child: Child,
    addr: SocketAddr,
    /// The same server on ::1, when this host has IPv6 loopback.
    addr_ipv6: Option<SocketAddr>,
    dir: PathBuf,
}

impl Unbound {
    /// None when the unbound binary is not installed.
    fn start(name: &str) -> Option<Unbound> {
        let binary = unbound_binary()?;
        let dir = std::env::temp_dir().join(format!("ringpost-dns-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for _ in 0..5 {
            let ipv6 = ipv6_loopback();
            let port = free_port(ipv6);
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            let addr_ipv6 = ipv6.then(|| SocketAddr::from((Ipv6Addr::LOCALHOST, port)));
            std::fs::write(dir.join("unbound.conf"), config(&dir, port, ipv6)).unwrap();
            let mut child = Command::new(&binary)
                .arg("-c")
                .arg(dir.join("unbound.conf"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.join("unbound.log")).unwrap())
                .spawn()
                .expect("unbound starts");
            if wait_ready(&mut child, addr) {
                return Some(Unbound { child, addr, addr_ipv6, dir });
            }
            // Lost the port to someone else, or failed: try another one.
            let _ = child.kill();
            let _ = child.wait();
            let log = std::fs::read_to_string(dir.join("unbound.log")).unwrap_or_default();
            eprintln!("unbound on port {port} did not come up: {log}");
        }
        panic!("unbound did not start; see {}", dir.display());
    }
}

/// Asks for the zone's MX until unbound answers (5 s at most).
fn wait_ready(child: &mut Child, addr: SocketAddr) -> bool {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let question = Question::new("test", RecordKind::Mx).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buffer = [0u8; 1500];
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        let _ = socket.send_to(&query::encode_query(1, &question, true), addr);
        if let Ok((n, _)) = socket.recv_from(&mut buffer) {
            if query::check_response(1, &question, &buffer[..n]).is_ok() {
                return true;
            }
        }
    }
    false
}

impl Drop for Unbound {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn unbound_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path).chain(["/usr/sbin".into(), "/sbin".into()]);
    dirs.map(|dir: PathBuf| dir.join("unbound")).find(|p| p.is_file())
}

fn config(dir: &Path, port: u16, ipv6: bool) -> String {
    let (interface_ipv6, do_ipv6) = if ipv6 { (format!("interface: ::1@{port}"), "yes") } else { (String::new(), "no") };
    format!(
        r#"server:
    interface: 127.0.0.1@{port}
    {interface_ipv6}
    port: {port}
    do-daemonize: no
    use-syslog: no
    logfile: ""
    verbosity: 0
    chroot: ""
    username: ""
    directory: "{dir}"
    pidfile: ""
    do-ip4: yes
    do-ip6: {do_ipv6}
    do-udp: yes
    do-tcp: yes
    num-threads: 1
    module-config: "iterator"
    access-control: 127.0.0.0/8 allow
    access-control: ::1/128 allow
    cache-max-negative-ttl: 3600
{zone}
remote-control:
    control-enable: no
"#,
        dir = dir.display(),
        zone = zone()
    )
}

/// A port free for both UDP and TCP on 127.0.0.1 (and ::1) right now.
fn free_port(ipv6: bool) -> u16 {
    loop {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        let tcp = std::net::TcpListener::bind(("127.0.0.1", port));
        let free_ipv6 = !ipv6
            || (UdpSocket::bind((Ipv6Addr::LOCALHOST, port)).is_ok()
                && std::net::TcpListener::bind((Ipv6Addr::LOCALHOST, port)).is_ok());
        if tcp.is_ok() && free_ipv6 {
            return port;
        }
    }
}

fn ipv6_loopback() -> bool {
    UdpSocket::bind((Ipv6Addr::LOCALHOST, 0)).is_ok()
}

/// A port where nothing answers: bound and never read, so datagrams vanish.
fn silent_server() -> (UdpSocket, SocketAddr) {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    (socket, addr)
}

fn params(servers: Vec<SocketAddr>) -> ResolverParams {
    ResolverParams { servers, timeout: Duration::from_millis(1000), attempts: 2, ..ResolverParams::default() }
}

/// Runs `test` on a fresh glommio executor.
fn on_executor<F, Fut>(test: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + 'static,
{
    LocalExecutorBuilder::new(Placement::Unbound)
        .spawn(test)
        .expect("executor starts")
        .join()
        .expect("test ran");
}

macro_rules! unbound_or_skip {
    ($name:expr) => {
        match Unbound::start($name) {
            Some(unbound) => unbound,
            None => {
                eprintln!("SKIPPED: the unbound binary is missing (apt-get install unbound; tests/run does it)");
                return;
            }
        }
    };
}

#[test]
fn mx_hosts_sorted_with_addresses() {
    let unbound = unbound_or_skip!("mx");
    let server = unbound.addr;
    on_executor(move || async move {
        let resolver = Resolver::new(params(vec![server])).unwrap();
        let route = mx::route(&resolver, "Mail.Test.").await.unwrap();
        assert_eq!(route.domain, "mail.test");
        assert!(!route.implicit);
        let hosts: Vec<(&str, u16)> = route.hosts.iter().map(|h| (h.name.as_str(), h.preference)).collect();
        assert_eq!(hosts, [("mx1.mail.test", 10), ("mx2.mail.test", 20)]);
        assert_eq!(route.hosts[0].ipv4, [Ipv4Addr::new(127, 0, 0, 11)]);
        assert!(route.hosts[0].ipv6.is_empty());
        assert_eq!(route.hosts[1].ipv4, [Ipv4Addr::new(127, 0, 0, 12)]);
        assert_eq!(route.hosts[1].ipv6, [Ipv6Addr::LOCALHOST]);
        // MX, then A and AAAA for two hosts: five questions, all on the wire.
        let stats = resolver.stats();
        assert_eq!((stats.lookups, stats.udp_queries_sent, stats.cache_hits), (5, 5, 0));
        // Again: all from the cache (positive answers and NODATA for AAAA).
        let again = mx::route(&resolver, "mail.test").await.unwrap();
        assert_eq!(again.hosts.len(), 2);
        let stats = resolver.stats();
        assert_eq!((stats.udp_queries_sent, stats.cache_hits), (5, 5));
        match resolver.lookup("mail.test", RecordKind::Mx).await.unwrap() {
            Lookup::Records { records, ttl_s } => {
                assert!(ttl_s > 290 && ttl_s <= 300, "the TTL counts down from 300: {ttl_s}");
                assert!(records.contains(&RecordData::Mx(MxRecord { preference: 10, exchange: "mx1.mail.test".into() })));
            }
            other => panic!("{other:?}"),
        }
    });
}

#[test]
fn implicit_mx_null_mx_and_nxdomain() {
    let unbound = unbound_or_skip!("kinds");
    let server = unbound.addr;
    on_executor(move || async move {
        let resolver = Resolver::new(params(vec![server])).unwrap();
        let route = mx::route(&resolver, "plain.test").await.unwrap();
        assert!(route.implicit);
        assert_eq!(route.hosts.len(), 1);
        assert_eq!((route.hosts[0].name.as_str(), route.hosts[0].preference), ("plain.test", 0));
        assert_eq!(route.hosts[0].ipv4, [Ipv4Addr::new(127, 0, 0, 14)]);

        let lookups_before = resolver.stats().lookups;
        let error = mx::route(&resolver, "nomail.test").await.unwrap_err();
        assert_eq!(error, RouteError::NullMx { domain: "nomail.test".into() });
        assert_eq!(error.enhanced(), Enhanced(5, 1, 10));
        assert!(error.is_permanent());
        assert_eq!(resolver.stats().lookups, lookups_before + 1, "a null MX looks up no address");

        let error = mx::route(&resolver, "nothing.test").await.unwrap_err();
        assert_eq!(error, RouteError::NoSuchDomain { domain: "nothing.test".into() });
        assert_eq!(error.reply().code, 550);
        assert_eq!(error.enhanced(), Enhanced(5, 1, 2));

        let error = mx::route(&resolver, "deadmx.test").await.unwrap_err();
        assert_eq!(error, RouteError::NoAddress { domain: "deadmx.test".into() });
        assert_eq!(error.enhanced(), Enhanced(5, 4, 4));
    });
}

#[test]
fn negative_answers_are_cached_for_the_soa_minimum() {
    let unbound = unbound_or_skip!("negative");
    let server = unbound.addr;
    on_executor(move || async move {
        let resolver = Resolver::new(params(vec![server])).unwrap();
        let nx = resolver.lookup("nothing.test", RecordKind::Mx).await.unwrap();
        let Lookup::NxDomain { ttl_s } = nx else { panic!("{nx:?}") };
        assert!(ttl_s > 0 && ttl_s <= 300, "min(SOA TTL 3600, MINIMUM 300): {ttl_s}");
        let nodata = resolver.lookup("plain.test", RecordKind::Mx).await.unwrap();
        let Lookup::NoData { ttl_s } = nodata else { panic!("{nodata:?}") };
        assert!(ttl_s > 0 && ttl_s <= 300, "{ttl_s}");
        let sent = resolver.stats().udp_queries_sent;
        assert!(matches!(resolver.lookup("nothing.test", RecordKind::Mx).await, Ok(Lookup::NxDomain { .. })));
        assert!(matches!(resolver.lookup("PLAIN.test", RecordKind::Mx).await, Ok(Lookup::NoData { .. })));
        assert_eq!(resolver.stats().udp_queries_sent, sent, "both negative answers came from the cache");
        assert_eq!(resolver.stats().cache_hits, 2);
    });
}

#[test]
fn cname_chain_followed_and_loop_bounded() {
    let unbound = unbound_or_skip!("cname");
    let server = unbound.addr;
    on_executor(move || async move {
        let resolver = Resolver::new(params(vec![server])).unwrap();
        let route = mx::route(&resolver, "alias.test").await.unwrap();
        let hosts: Vec<(&str, u16)> = route.hosts.iter().map(|h| (h.name.as_str(), h.preference)).collect();
        assert_eq!(hosts, [("mx1.mail.test", 5)]);
        // The chain's answer is cached under the first name, for the
        // smallest TTL along it (step1's 60 s).
        let cached = resolver.lookup("alias.test", RecordKind::Mx).await.unwrap();
        assert!(cached.ttl_s() <= 60, "{cached:?}");

        let error = resolver.lookup("loop1.test", RecordKind::A).await.unwrap_err();
        assert_eq!(error, ResolveError::CnameChainTooLong { name: "loop1.test".into(), limit: CNAME_CHAIN_LENGTH_MAX });
        let error = mx::route(&resolver, "loop1.test").await.unwrap_err();
        assert!(matches!(error, RouteError::Unroutable { .. }), "{error:?}");
        assert!(error.is_permanent());
    });
}

#[test]
fn truncated_answer_is_fetched_over_tcp() {
    let unbound = unbound_or_skip!("tcp");
    let server = unbound.addr;
    on_executor(move || async move {
        let resolver = Resolver::new(params(vec![server])).unwrap();
        let lookup = resolver.lookup("big.test", RecordKind::A).await.unwrap();
        let (ipv4, _) = lookup.addresses();
        assert_eq!(ipv4.len(), RECORD_COUNT_MAX.min(BIG_RECORD_COUNT), "kept up to the bound");
        let stats = resolver.stats();
        assert_eq!((stats.udp_queries_sent, stats.tcp_queries_sent), (1, 1));
        let route = mx::route(&resolver, "big.test").await.unwrap();
        assert!(route.implicit);
        assert_eq!(route.hosts[0].ipv4.len(), ipv4.len());
        assert_eq!(resolver.stats().tcp_queries_sent, 1, "the A answer came from the cache");
    });
}

#[test]
fn refused_and_silent_servers_are_temporary_failures() {
    let unbound = unbound_or_skip!("temporary");
    let server = unbound.addr;
    let (_silent, silent) = silent_server();
    on_executor(move || async move {
        let resolver = Resolver::new(params(vec![server])).unwrap();
        let error = mx::route(&resolver, "x.refused.test").await.unwrap_err();
        assert!(
            matches!(&error, RouteError::Temporary { error: ResolveError::ServerFailure { .. }, .. }),
            "{error:?}"
        );
        assert_eq!(error.enhanced(), Enhanced(4, 4, 3));
        assert_eq!(error.reply().code, 451);
        assert_eq!(resolver.stats().udp_queries_sent, 2, "REFUSED twice: two attempts, one server");

        let quick = ResolverParams { timeout: Duration::from_millis(200), attempts: 1, ..params(vec![silent]) };
        let resolver = Resolver::new(quick).unwrap();
        let started = Instant::now();
        let error = mx::route(&resolver, "mail.test").await.unwrap_err();
        assert_eq!(error, RouteError::Temporary { domain: "mail.test".into(), error: ResolveError::Timeout });
        assert!(started.elapsed() >= Duration::from_millis(200) && started.elapsed() < Duration::from_secs(2));

        // The silent server first, unbound second: the answer comes from
        // the second after one timeout.
        let failover = ResolverParams { timeout: Duration::from_millis(200), attempts: 1, ..params(vec![silent, server]) };
        let resolver = Resolver::new(failover).unwrap();
        let route = mx::route(&resolver, "mail.test").await.unwrap();
        assert_eq!(route.hosts.len(), 2);
        assert!(resolver.stats().timeouts >= 1);
    });
}

#[test]
fn many_queries_in_flight_on_a_rotating_pool() {
    let unbound = unbound_or_skip!("many");
    let server = unbound.addr;
    on_executor(move || async move {
        let small = ResolverParams {
            udp_sockets_per_family: 2,
            socket_queries_max: 16,
            queries_in_flight_max: MANY_QUERY_COUNT,
            ..params(vec![server])
        };
        let resolver = Rc::new(Resolver::new(small).unwrap());
        let mut tasks = Vec::new();
        for i in 0..MANY_QUERY_COUNT {
            let resolver = resolver.clone();
            tasks.push(glommio::spawn_local(async move {
                resolver.lookup(&format!("n{i}.test"), RecordKind::A).await
            }));
        }
        let mut peak_in_flight = 0;
        for task in tasks {
            peak_in_flight = peak_in_flight.max(resolver.in_flight());
            let result = task.await;
            assert!(matches!(result, Ok(Lookup::NxDomain { .. })), "{result:?}");
        }
        let stats = resolver.stats();
        assert!(peak_in_flight > 1, "queries overlapped");
        assert_eq!(stats.udp_queries_sent, MANY_QUERY_COUNT as u64);
        assert!(stats.sockets_opened >= (MANY_QUERY_COUNT / 16) as u64, "sockets were replaced: {stats:?}");
        assert_eq!(resolver.in_flight(), 0);
        assert!(resolver.udp_socket_count() <= 2, "retired sockets close once their queries are done");
    });
}

#[test]
fn queries_beyond_the_in_flight_bound_fail_at_once() {
    let (_silent, silent) = silent_server();
    on_executor(move || async move {
        let one = ResolverParams {
            timeout: Duration::from_millis(300),
            attempts: 1,
            queries_in_flight_max: 1,
            ..params(vec![silent])
        };
        let resolver = Resolver::new(one).unwrap();
        let (first, second) = futures_lite::future::zip(
            resolver.lookup("a.test", RecordKind::A),
            resolver.lookup("b.test", RecordKind::A),
        )
        .await;
        assert_eq!(first, Err(ResolveError::Timeout));
        assert_eq!(second, Err(ResolveError::QueriesInFlightExceeded { limit: 1 }));
        assert!(!second.unwrap_err().is_permanent());
        assert_eq!(resolver.stats().queries_refused_in_flight, 1);
        assert_eq!(resolver.in_flight(), 0);
    });
}

#[test]
fn ipv6_server_with_tcp_fallback() {
    let unbound = unbound_or_skip!("ipv6");
    let Some(server) = unbound.addr_ipv6 else {
        eprintln!("SKIPPED: no IPv6 loopback on this host");
        return;
    };
    on_executor(move || async move {
        let resolver = Resolver::new(params(vec![server])).unwrap();
        let route = mx::route(&resolver, "mail.test").await.unwrap();
        assert_eq!(route.hosts.len(), 2);
        let lookup = resolver.lookup("big.test", RecordKind::A).await.unwrap();
        assert_eq!(lookup.addresses().0.len(), RECORD_COUNT_MAX.min(BIG_RECORD_COUNT));
        let stats = resolver.stats();
        assert_eq!(stats.tcp_queries_sent, 1);
        assert!(stats.udp_queries_sent >= 6);
    });
}

#[test]
fn same_question_at_once_goes_on_the_wire_once() {
    let unbound = unbound_or_skip!("shared");
    let server = unbound.addr;
    on_executor(move || async move {
        let resolver = Rc::new(Resolver::new(params(vec![server])).unwrap());
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let resolver = resolver.clone();
                glommio::spawn_local(async move { mx::route(&resolver, "mail.test").await })
            })
            .collect();
        for task in tasks {
            assert_eq!(task.await.unwrap().hosts.len(), 2);
        }
        let stats = resolver.stats();
        assert_eq!(stats.udp_queries_sent, 5, "MX, then A and AAAA of two hosts: {stats:?}");
        assert_eq!(stats.lookups, 100);
        assert!(stats.lookups_coalesced >= 19, "{stats:?}");
        assert_eq!(stats.lookups_coalesced + stats.cache_hits, 95, "{stats:?}");
    });
}
