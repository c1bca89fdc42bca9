//! Callouts over real sockets to a scripted back end, with the shard's
//! manual clock for the cache's TTLs: the reply mapping, the cache, the
//! coalescing of concurrent RCPTs, the limits, the continuation after a
//! timeout, random local parts and a refused null sender.

use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::ingress::policy;
use crate::queue::stored_address;
use crate::smtp::reply::Reply;
use crate::testing::{self, Peer, RawClient, Script};

const START_MS: u64 = 1_800_000_000_000;

/// A test shard whose rule sends dept.test to the peer on `port`, with
/// callouts and the given extra rule keys and `[verify]` lines.
async fn shard_for(name: &str, port: u16, rule: &str, verify: &str) -> testing::TestShard {
    let dir = testing::tempdir(name);
    let extra = format!(
        "[[transport]]\ndomains = [\"dept.test\"]\ntransport = \"smtp\"\nnexthop = \"127.0.0.1:{port}\"\n\
         verify = \"callout\"\n{rule}\n[verify]\n{verify}\n"
    );
    testing::shard(testing::config(&dir, &extra), START_MS).await
}

/// The RCPT reply the shard gives a client outside relay.networks.
async fn rcpt(t: &testing::TestShard, address: &str) -> Reply {
    let shard = &t.shard;
    let address = stored_address(address).unwrap();
    let client: IpAddr = "192.0.2.1".parse().unwrap();
    policy::check_rcpt(&shard.config(), None, Some(&shard.verifier), client, &address, "s@example.org").await
}

/// Answers RCPT for alice@ with 250 and anything else with 550, after
/// `delay_ms`.
fn department(delay_ms: u64) -> Arc<Script> {
    Arc::new(move |verb, _| match verb {
        "MAIL" => "250 2.1.0 ok\r\n".to_string(),
        "RCPT" => {
            std::thread::sleep(Duration::from_millis(delay_ms));
            "550 5.1.1 User unknown\r\n".to_string()
        }
        _ => "250 ok\r\n".to_string(),
    })
}

fn rcpt_lines(peer: &Peer) -> Vec<String> {
    peer.commands("RCPT")
}

#[test]
fn a_refusal_is_passed_on_with_the_hosts_words_and_cached() {
    let peer = Peer::start(department(0));
    let port = peer.port;
    testing::run(move || {
        Box::pin(async move {
            let t = shard_for("verify-refusal", port, "", "").await;
            let reply = rcpt(&t, "x@dept.test").await;
            assert_eq!(reply.code, 550, "{reply:?}");
            assert_eq!(reply.summary(), "550 5.1.1 <x@dept.test>: callout to 127.0.0.1 said: 550 5.1.1 User unknown");
            assert_eq!(rcpt_lines(&peer), vec!["RCPT TO:<x@dept.test>"]);
            let mail = peer.commands("MAIL");
            assert_eq!(mail, vec!["MAIL FROM:<>"], "the null sender, no SIZE");
            assert!(peer.commands("DATA").is_empty());
            // Again: from the cache, no new connection, no RCPT.
            let again = rcpt(&t, "x@dept.test").await;
            assert_eq!(again, reply);
            assert_eq!(peer.connections().len(), 1);
            assert_eq!(rcpt_lines(&peer).len(), 1);
            assert_eq!(t.shard.verifier.stats().cache_hits, 1);
            // The negative TTL (2h) passes: asked again, on a new session
            // (a server counts refused RCPTs against a session).
            for _ in 0..200 {
                if !peer.commands("QUIT").is_empty() {
                    break;
                }
                testing::settle(5).await;
            }
            assert_eq!(peer.commands("QUIT").len(), 1, "{:?}", peer.connections());
            t.manual.advance(Duration::from_secs(2 * 3600));
            let later = rcpt(&t, "x@dept.test").await;
            assert_eq!(later.code, 550);
            assert_eq!(rcpt_lines(&peer).len(), 2);
            assert_eq!(peer.connections().len(), 2);
            assert_eq!(t.shard.verifier.stats().started, 2);
        })
    });
}

#[test]
fn an_accepted_recipient_is_250_and_stays_cached_for_the_positive_ttl() {
    let peer = Peer::start(Arc::new(|verb, _| match verb {
        "RCPT" => "250 2.1.5 ok\r\n".to_string(),
        _ => "250 ok\r\n".to_string(),
    }));
    let port = peer.port;
    testing::run(move || {
        Box::pin(async move {
            let t = shard_for("verify-accept", port, "", "").await;
            let reply = rcpt(&t, "alice@dept.test").await;
            assert_eq!(reply.summary(), "250 2.1.5 <alice@dept.test>: Recipient ok (verified)");
            t.manual.advance(Duration::from_secs(23 * 3600));
            assert!(rcpt(&t, "alice@dept.test").await.is_positive());
            assert_eq!(rcpt_lines(&peer).len(), 1, "cached for 24h");
            t.manual.advance(Duration::from_secs(3600));
            assert!(rcpt(&t, "alice@dept.test").await.is_positive());
            assert_eq!(rcpt_lines(&peer).len(), 2, "asked again after 24h");
            // An accepting probe keeps its session: RSET, then the next one.
            assert_eq!(peer.connections().len(), 1, "{:?}", peer.connections());
            assert_eq!(peer.commands("RSET").len(), 1, "{:?}", peer.connections());
        })
    });
}

#[test]
fn concurrent_rcpts_for_one_address_share_one_callout() {
    let peer = Peer::start(department(300));
    let port = peer.port;
    testing::run(move || {
        Box::pin(async move {
            let t = Rc::new(shard_for("verify-coalesce", port, "", "").await);
            let mut tasks = Vec::new();
            for _ in 0..50 {
                let t = t.clone();
                tasks.push(glommio::spawn_local(async move { rcpt(&t, "nobody@dept.test").await }));
            }
            for task in tasks {
                assert_eq!(task.await.code, 550);
            }
            assert_eq!(rcpt_lines(&peer).len(), 1, "one callout for 50 RCPTs");
            let stats = t.shard.verifier.stats();
            assert_eq!((stats.started, stats.coalesced), (1, 49));
        })
    });
}

#[test]
fn after_the_timeout_the_client_hears_451_and_the_callout_fills_the_cache() {
    let peer = Peer::start(department(800));
    let port = peer.port;
    testing::run(move || {
        Box::pin(async move {
            let t = shard_for("verify-continue", port, "", "callout_timeout = \"200ms\"").await;
            let started = Instant::now();
            let reply = rcpt(&t, "late@dept.test").await;
            let waited = started.elapsed();
            assert_eq!(reply.code, 451, "{reply:?}");
            assert!(reply.summary().starts_with("451 4.4.3 "), "{reply:?}");
            assert!(waited < Duration::from_millis(600), "{waited:?}");
            assert_eq!(t.shard.verifier.stats().timeouts, 1);
            // The callout goes on; once it has its answer the retry is
            // answered from memory.
            testing::settle(1_000).await;
            let retry = rcpt(&t, "late@dept.test").await;
            assert_eq!(retry.code, 550, "{retry:?}");
            assert_eq!(peer.connections().len(), 1);
            assert_eq!(rcpt_lines(&peer).len(), 1);
        })
    });
}

#[test]
fn beyond_the_rate_of_a_domain_rcpts_get_451_at_once() {
    let peer = Peer::start(department(0));
    let port = peer.port;
    testing::run(move || {
        Box::pin(async move {
            let t = shard_for("verify-rate", port, "", "callout_rate_per_domain = 3").await;
            let mut codes = Vec::new();
            for i in 0..10 {
                let reply = rcpt(&t, &format!("guess{i}@dept.test")).await;
                codes.push(reply.code);
                if reply.code == 451 {
                    assert!(reply.summary().starts_with("451 4.4.3 Try again later"), "{reply:?}");
                }
            }
            assert_eq!(codes, vec![550, 550, 550, 451, 451, 451, 451, 451, 451, 451]);
            assert_eq!(rcpt_lines(&peer).len(), 3, "the back end saw the burst only");
            assert_eq!(t.shard.verifier.stats().rate_limited, 7);
            // A cached answer is not limited.
            assert_eq!(rcpt(&t, "guess0@dept.test").await.code, 550);
        })
    });
}

#[test]
fn a_host_gets_at_most_max_per_host_callouts_at_once() {
    let peer = Peer::start(department(300));
    let port = peer.port;
    testing::run(move || {
        Box::pin(async move {
            let t = Rc::new(shard_for("verify-host", port, "", "callout_max_per_host = 2").await);
            let mut tasks = Vec::new();
            for i in 0..5 {
                let t = t.clone();
                tasks.push(glommio::spawn_local(async move { rcpt(&t, &format!("p{i}@dept.test")).await.code }));
            }
            let mut codes = Vec::new();
            for task in tasks {
                codes.push(task.await);
            }
            codes.sort();
            assert_eq!(codes, vec![451, 451, 451, 550, 550]);
            assert_eq!(rcpt_lines(&peer).len(), 2);
        })
    });
}

#[test]
fn a_back_end_that_cannot_be_reached_defers_and_nothing_is_cached() {
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    testing::run(move || {
        Box::pin(async move {
            let t = shard_for("verify-down", port, "", "").await;
            let reply = rcpt(&t, "x@dept.test").await;
            assert!(reply.summary().starts_with("451 4.4.3 <x@dept.test>: Recipient not verified"), "{reply:?}");
            let again = rcpt(&t, "x@dept.test").await;
            assert_eq!(again.code, 451);
            assert_eq!(t.shard.verifier.stats().cache_hits, 0, "a failure is never cached");
            assert_eq!(t.shard.verifier.stats().started, 2);

            let t = shard_for("verify-down-ok", port, "callout_defer_ok = true", "").await;
            let reply = rcpt(&t, "x@dept.test").await;
            assert_eq!(reply.code, 250, "{reply:?}");
            assert!(reply.summary().contains("not verified"), "{reply:?}");
        })
    });
}

#[test]
fn a_domain_accepting_a_random_local_part_is_accept_all() {
    let peer = Peer::start(Arc::new(|verb, _| match verb {
        "RCPT" => "250 2.1.5 ok\r\n".to_string(),
        _ => "250 ok\r\n".to_string(),
    }));
    let port = peer.port;
    testing::run(move || {
        Box::pin(async move {
            let t = shard_for("verify-random", port, "callout_random = true", "").await;
            assert!(rcpt(&t, "a@dept.test").await.is_positive());
            let lines = rcpt_lines(&peer);
            assert_eq!(lines.len(), 2, "{lines:?}");
            assert!(lines[0].starts_with("RCPT TO:<rp-verify-") && lines[0].ends_with("@dept.test>"), "{lines:?}");
            // Any other address of the domain: accepted from the domain's entry.
            assert!(rcpt(&t, "b@dept.test").await.is_positive());
            assert_eq!(rcpt_lines(&peer).len(), 2);
        })
    });
}

#[test]
fn a_domain_refusing_the_null_sender_refuses_every_address_from_the_cache() {
    let peer = Peer::start(Arc::new(|verb, _| match verb {
        "MAIL" => "553 5.7.1 null sender refused\r\n".to_string(),
        "RCPT" => "503 5.5.1 need MAIL\r\n".to_string(),
        _ => "250 ok\r\n".to_string(),
    }));
    let port = peer.port;
    testing::run(move || {
        Box::pin(async move {
            let t = shard_for("verify-mail", port, "", "").await;
            let reply = rcpt(&t, "a@dept.test").await;
            assert_eq!(
                reply.summary(),
                "550 5.1.1 <a@dept.test>: callout to 127.0.0.1 refused the callout: 553 5.7.1 null sender refused"
            );
            let other = rcpt(&t, "b@dept.test").await;
            assert_eq!(other.code, 550);
            assert_eq!(peer.commands("MAIL").len(), 1, "the domain's entry answers");
        })
    });
}

#[test]
fn a_session_gets_the_callouts_answer_at_rcpt_and_the_known_user_is_queued() {
    let peer = Peer::start(Arc::new(|verb, n| match verb {
        "RCPT" if n == 0 => "250 2.1.5 ok\r\n".to_string(),
        "RCPT" => "550 5.1.1 <bob@dept.test>: Recipient address rejected: User unknown\r\n".to_string(),
        _ => "250 ok\r\n".to_string(),
    }));
    let port = peer.port;
    testing::run(move || {
        Box::pin(async move {
            let t = shard_for("verify-session", port, "", "").await;
            let listener = glommio::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let listen_port = listener.local_addr().unwrap().port();
            glommio::spawn_local(crate::ingress::accept_loop(t.shard.clone(), listener, crate::ingress::listener::Listening::mx(&t.shard))).detach();
            let replies = testing::client(move || {
                let mut c = RawClient::connect(listen_port);
                let mut replies = vec![c.reply()];
                for line in [
                    &b"EHLO client.test\r\n"[..],
                    b"MAIL FROM:<s@example.org>\r\n",
                    b"RCPT TO:<alice@dept.test>\r\n",
                    b"RCPT TO:<bob@dept.test>\r\n",
                    b"DATA\r\n",
                    b"Subject: x\r\n\r\nhello\r\n.\r\n",
                    b"QUIT\r\n",
                ] {
                    replies.push(c.command(line));
                }
                replies
            })
            .await;
            assert!(replies[3].starts_with("250 2.1.5 "), "{replies:?}");
            assert_eq!(
                replies[4],
                "550 5.1.1 <bob@dept.test>: callout to 127.0.0.1 said: 550 5.1.1 <bob@dept.test>: \
                 Recipient address rejected: User unknown\r\n"
            );
            assert!(replies[6].starts_with("250 2.0.0 Ok: queued as "), "{replies:?}");
            let env = t.shard.queue.take().await.unwrap();
            let to: Vec<String> = env.recipients.iter().map(|r| r.address.to_string()).collect();
            assert_eq!(to, vec!["alice@dept.test"]);
        })
    });
}

#[test]
fn use_sender_asks_with_the_envelope_sender_and_caches_per_sender() {
    let peer = Peer::start(department(0));
    let port = peer.port;
    testing::run(move || {
        Box::pin(async move {
            let t = shard_for("verify-sender", port, "callout_sender = \"use-sender\"", "").await;
            let shard = &t.shard;
            let address = stored_address("x@dept.test").unwrap();
            let client: IpAddr = "192.0.2.1".parse().unwrap();
            for sender in ["a@example.org", "b@example.org", "a@example.org"] {
                let reply =
                    policy::check_rcpt(&shard.config(), None, Some(&shard.verifier), client, &address, sender).await;
                assert_eq!(reply.code, 550);
            }
            assert_eq!(peer.commands("MAIL"), vec!["MAIL FROM:<a@example.org>", "MAIL FROM:<b@example.org>"]);
            assert_eq!(shard.verifier.stats().cache_hits, 1);
        })
    });
}

#[test]
fn an_lmtp_rule_is_asked_over_lmtp() {
    let peer = Peer::start(department(0));
    let port = peer.port;
    testing::run(move || {
        Box::pin(async move {
            let dir = testing::tempdir("verify-lmtp");
            let extra = format!(
                "[[transport]]\ndomains = [\"dept.test\"]\ntransport = \"lmtp\"\nnexthop = \"127.0.0.1:{port}\"\n\
                 verify = \"callout\"\ncallout_sender = \"postmaster@mx.test\"\n"
            );
            let t = testing::shard(testing::config(&dir, &extra), START_MS).await;
            let reply = rcpt(&t, "x@dept.test").await;
            assert_eq!(
                reply.summary(),
                format!("550 5.1.1 <x@dept.test>: callout to 127.0.0.1:{port} said: 550 5.1.1 User unknown")
            );
            let lines = peer.connections().concat();
            assert!(lines[0].starts_with("LHLO "), "{lines:?}");
            assert_eq!(peer.commands("MAIL"), vec!["MAIL FROM:<postmaster@mx.test>"]);
        })
    });
}

/// Two shards on two threads: the owner of dept.test verifies an address
/// first; the other shard's RCPTs for it are then answered by the owner's
/// cache (one round trip, no callout), then by its own. Concurrent RCPTs
/// on both shards for a new address share the owner's one callout.
#[test]
fn shards_ask_the_owner_of_the_domain_and_share_its_cache() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let peer = Arc::new(Peer::start(department(200)));
    let port = peer.port;
    let owner = super::owner_shard("dept.test", 2);
    let mut ends: Vec<Option<super::MeshEnd>> = super::mesh(2).into_iter().map(Some).collect();
    // Steps: 0 start, 1 owner verified, 2 the other verified, 3 both asked
    // for the new address, 4 done.
    let step = Arc::new(AtomicUsize::new(0));
    let mut threads = Vec::new();
    for index in 0..2 {
        let end = ends[index].take();
        let (step, peer) = (step.clone(), peer.clone());
        threads.push(std::thread::spawn(move || {
            testing::run(move || {
                Box::pin(async move {
                    let dir = testing::tempdir(&format!("verify-mesh-{index}"));
                    let extra = format!(
                        "[[transport]]\ndomains = [\"dept.test\"]\ntransport = \"smtp\"\n\
                         nexthop = \"127.0.0.1:{port}\"\nverify = \"callout\"\n"
                    );
                    let t = testing::shard_in_mesh(testing::config(&dir, &extra), START_MS, index, end).await;
                    let wait_for = |n: usize| {
                        let step = step.clone();
                        async move {
                            while step.load(Ordering::SeqCst) < n {
                                testing::settle(5).await;
                            }
                        }
                    };
                    if index == owner {
                        assert_eq!(rcpt(&t, "x@dept.test").await.code, 550);
                        step.store(1, Ordering::SeqCst);
                    } else {
                        wait_for(1).await;
                        assert_eq!(rcpt(&t, "x@dept.test").await.code, 550, "from the owner's cache");
                        assert_eq!(rcpt(&t, "x@dept.test").await.code, 550, "from its own");
                        assert_eq!(t.shard.verifier.stats().cache_hits, 1);
                        assert_eq!(rcpt_lines(&peer).len(), 1);
                        step.store(2, Ordering::SeqCst);
                    }
                    wait_for(2).await;
                    let reply = rcpt(&t, "y@dept.test").await;
                    assert_eq!(reply.code, 550, "{reply:?}");
                    step.fetch_add(1, Ordering::SeqCst);
                    // Serve the other shard until it is done too.
                    wait_for(4).await;
                    let stats = t.shard.verifier.stats();
                    if index == owner {
                        assert_eq!((stats.started, stats.coalesced, stats.cache_hits), (2, 1, 1), "{stats:?}");
                    } else {
                        assert_eq!(stats.started, 0, "{stats:?}");
                    }
                })
            })
        }));
    }
    for thread in threads {
        thread.join().expect("shard thread");
    }
    assert_eq!(rcpt_lines(&peer), vec!["RCPT TO:<x@dept.test>", "RCPT TO:<y@dept.test>"]);
}
