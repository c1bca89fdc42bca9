//! The delivery engine and outbound SMTP over real sockets: messages the
//! queue hands over, delivered to Maildir or to a scripted SMTP peer, with
//! retries driven by the shard's manual clock (no sleeping for a lag).

use std::sync::Arc;
use std::time::Duration;

use crate::testing::{self, Peer};

const START_MS: u64 = 1_800_000_000_000;

/// Commits a message through the queue's normal path.
async fn accept(t: &testing::TestShard, to: &[&str], body: &[u8]) -> String {
    let queue = &t.shard.queue;
    let mut writer = queue.create().await.unwrap();
    writer.write(body).await.unwrap();
    let id = writer.id().to_string();
    let env = testing::envelope(&id, to, queue.clock().unix_ms());
    writer.commit(queue, env).await.unwrap();
    id
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..400 {
        if done() {
            return;
        }
        testing::settle(10).await;
    }
    panic!("timed out waiting for {what}");
}

/// A shard relaying through `delivery.smarthost` to a scripted peer.
async fn shard_with_peer(
    name: &str,
    script: Arc<testing::Script>,
) -> (testing::TestShard, Peer, std::path::PathBuf) {
    let peer = Peer::start(script);
    let dir = testing::tempdir(name);
    let extra = format!("[delivery]\nsmarthost = \"127.0.0.1:{}\"\n", peer.port);
    let t = testing::shard(testing::config(&dir, &extra), START_MS).await;
    (t, peer, dir)
}

/// Waits until message `id` has had its first attempt and is back with
/// the runners.
async fn wait_deferred(t: &testing::TestShard, id: &str) {
    let queue = t.shard.queue.clone();
    wait_for("the deferral", || {
        queue
            .entry(id)
            .is_some_and(|e| e.attempt_count == 1 && !e.in_flight)
    })
    .await;
}

/// Waits until `user`'s Maildir holds one message; its bytes.
async fn only_mail(dir: &std::path::Path, user: &str, what: &str) -> Vec<u8> {
    let new = dir.join(format!("mail/{user}/Maildir/new"));
    wait_for(what, || {
        std::fs::read_dir(&new)
            .map(|d| d.count() == 1)
            .unwrap_or(false)
    })
    .await;
    let file = std::fs::read_dir(&new)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::read(file).unwrap()
}

fn start_delivery(t: &testing::TestShard) {
    let shard = t.shard.clone();
    glommio::spawn_local_into(shard.delivery.clone().run(shard.clone()), shard.tq_delivery)
        .unwrap()
        .detach();
}

#[test]
fn a_local_message_is_written_to_its_maildir_and_completed() {
    testing::run(|| {
        Box::pin(async {
            let dir = testing::tempdir("deliver-local");
            let t = testing::shard(testing::config(&dir, ""), START_MS).await;
            start_delivery(&t);
            accept(&t, &["bob@localhost"], b"Subject: local\r\n\r\nhi\r\n").await;
            assert_eq!(
                only_mail(&dir, "bob", "the Maildir file").await,
                b"Return-Path: <sender@example.org>\nSubject: local\n\nhi\n"
            );
            let queue = t.shard.queue.clone();
            wait_for("the completion to be durable", || queue.live_count() == 0).await;
        })
    });
}

#[test]
fn a_deferred_recipient_is_retried_when_the_clock_reaches_the_lag() {
    testing::run(|| {
        Box::pin(async {
            // The first RCPT is refused for now, the second accepted.
            let script = Arc::new(|verb: &str, nth: usize| match (verb, nth) {
                ("RCPT", 0) => "451 4.2.0 try later\r\n".to_string(),
                _ => "250 2.0.0 ok\r\n".to_string(),
            });
            let (t, peer, _dir) = shard_with_peer("deliver-retry", script).await;
            start_delivery(&t);
            let id = accept(&t, &["far@example.net"], b"Subject: retry\r\n\r\nagain\r\n").await;
            wait_deferred(&t, &id).await;
            assert_eq!(peer.commands("RCPT").len(), 1);
            assert!(
                peer.commands("|").is_empty(),
                "no content after the only RCPT was refused"
            );
            // Nine minutes on: still waiting for the first runner (10 min).
            t.manual.advance(Duration::from_secs(9 * 60));
            testing::settle(100).await;
            assert_eq!(peer.commands("RCPT").len(), 1, "retried before its lag");
            t.manual.advance(Duration::from_secs(60));
            let queue = t.shard.queue.clone();
            wait_for("the retry to deliver", || queue.live_count() == 0).await;
            assert_eq!(peer.commands("RCPT").len(), 2);
            assert_eq!(peer.commands("|").len(), 3, "the content went once");
            assert!(peer
                .connections()
                .concat()
                .iter()
                .any(|l| l == "|Subject: retry"));
        })
    });
}

#[test]
fn two_messages_to_one_host_share_a_connection() {
    testing::run(|| {
        Box::pin(async {
            let ok = Arc::new(|_: &str, _: usize| "250 2.0.0 ok\r\n".to_string());
            let (t, peer, _dir) = shard_with_peer("deliver-reuse", ok).await;
            start_delivery(&t);
            accept(&t, &["one@example.net"], b"Subject: first\r\n\r\n1\r\n").await;
            let queue = t.shard.queue.clone();
            wait_for("the first delivery", || queue.live_count() == 0).await;
            accept(&t, &["two@example.net"], b"Subject: second\r\n\r\n2\r\n").await;
            let queue = t.shard.queue.clone();
            wait_for("the second delivery", || queue.live_count() == 0).await;
            let connections = peer.connections();
            assert_eq!(connections.len(), 1, "{connections:?}");
            let mails: Vec<&String> = connections[0]
                .iter()
                .filter(|l| l.starts_with("MAIL FROM:"))
                .collect();
            assert_eq!(mails.len(), 2, "{connections:?}");
            assert_eq!(mails[0], "MAIL FROM:<sender@example.org>");
        })
    });
}

#[test]
fn a_permanent_refusal_bounces_once_to_the_sender() {
    testing::run(|| {
        Box::pin(async {
            let peer = Peer::start(Arc::new(|verb: &str, _: usize| match verb {
                "RCPT" => "550 5.1.1 no such user\r\n".to_string(),
                _ => "250 2.0.0 ok\r\n".to_string(),
            }));
            let dir = testing::tempdir("deliver-bounce");
            // The sender's domain is local, so the bounce lands in a Maildir.
            let extra = format!(
                "[delivery]\nsmarthost = \"127.0.0.1:{}\"\n[domains]\nlocal = [\"example.org\"]\n",
                peer.port
            );
            let t = testing::shard(testing::config(&dir, &extra), START_MS).await;
            start_delivery(&t);
            accept(
                &t,
                &["gone@example.net"],
                b"Subject: bounce me\r\n\r\nx\r\n",
            )
            .await;
            let bounce = String::from_utf8(only_mail(&dir, "sender", "the bounce").await).unwrap();
            assert!(bounce.starts_with("Return-Path: <>\n"), "{bounce}");
            assert!(
                bounce.contains("Final-Recipient: rfc822; gone@example.net"),
                "{bounce}"
            );
            assert!(bounce.contains("Status: 5.1.1"), "{bounce}");
            let queue = t.shard.queue.clone();
            wait_for("the queue to empty", || queue.live_count() == 0).await;
            assert_eq!(
                peer.commands("RCPT").len(),
                1,
                "refused once, never retried"
            );
        })
    });
}

#[test]
fn a_damaged_body_file_is_deferred_never_delivered() {
    a_damaged_stored_body_is_deferred_never_delivered("files");
}

#[test]
fn a_damaged_body_in_the_body_log_is_deferred_never_delivered() {
    a_damaged_stored_body_is_deferred_never_delivered("log");
}

fn a_damaged_stored_body_is_deferred_never_delivered(store: &'static str) {
    testing::run(move || {
        Box::pin(async move {
            let ok = Arc::new(|_: &str, _: usize| "250 2.0.0 ok\r\n".to_string());
            let peer = Peer::start(ok);
            let dir = testing::tempdir("deliver-damaged");
            let extra = format!("[delivery]\nsmarthost = \"127.0.0.1:{}\"\n", peer.port);
            let set = format!("queue.body_store=\"{store}\"");
            let t = testing::shard(testing::config_with(&dir, &extra, &[&set]), START_MS).await;
            let mut body = b"Subject: large\r\n\r\n".to_vec();
            while body.len() < 200_000 {
                body.extend_from_slice(
                    b"a line of a large message, stored in a body file of its own\r\n",
                );
            }
            let id = accept(&t, &["far@example.net"], &body).await;
            // One byte changed on disk after the commit: in the body file, or
            // in the body log segment that holds this one body after its
            // 4 KiB header.
            let (path, at) = match store {
                "files" => (t.shard.queue.body_path(&id), 100_000),
                _ => {
                    let mut segments: Vec<_> = std::fs::read_dir(t.shard.queue.body_path(&id).parent().unwrap())
                        .unwrap()
                        .map(|e| e.unwrap().path())
                        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("bodylog-"))
                        .collect();
                    assert_eq!(segments.len(), 1, "{segments:?}");
                    (segments.remove(0), 4096 + 100_000)
                }
            };
            let mut stored = std::fs::read(&path).unwrap();
            stored[at] ^= 0x20;
            std::fs::write(&path, stored).unwrap();
            start_delivery(&t);
            wait_deferred(&t, &id).await;
            assert!(
                peer.connections().is_empty(),
                "nothing went out: {:?}",
                peer.connections()
            );
        })
    });
}

/// Commits a message whose envelope carries added header lines (what
/// content scanners add).
async fn accept_with_headers(t: &testing::TestShard, to: &[&str], body: &[u8], headers: &[u8]) -> String {
    let queue = &t.shard.queue;
    let mut writer = queue.create().await.unwrap();
    writer.write(body).await.unwrap();
    let id = writer.id().to_string();
    let mut env = testing::envelope(&id, to, queue.clock().unix_ms());
    env.headers_prepended = headers.to_vec();
    writer.commit(queue, env).await.unwrap();
    id
}

#[test]
fn added_header_lines_go_above_the_stored_content_on_every_transport() {
    testing::run(|| {
        Box::pin(async {
            let added = b"X-Spam-Status: No, score=0.1\r\nX-Virus-Scanned: clamd\r\n";
            // SMTP: after DATA, before the content; SIZE counts them.
            let ok = Arc::new(|_: &str, _: usize| "250 2.0.0 ok\r\n".to_string());
            let (t, peer, dir) = shard_with_peer("deliver-headers", ok).await;
            start_delivery(&t);
            accept_with_headers(&t, &["far@example.net"], b"Subject: scanned\r\n\r\n.dot\r\n", added).await;
            accept_with_headers(&t, &["bob@localhost"], b"Subject: local\r\n\r\nhi\r\n", added).await;
            let queue = t.shard.queue.clone();
            wait_for("both deliveries", || queue.live_count() == 0).await;
            let data: Vec<String> = peer.commands("|");
            assert_eq!(
                data,
                vec!["|X-Spam-Status: No, score=0.1", "|X-Virus-Scanned: clamd", "|Subject: scanned", "|", "|..dot"]
            );
            // Maildir: below Return-Path, with LF line ends like the rest.
            assert_eq!(
                only_mail(&dir, "bob", "the Maildir file").await,
                b"Return-Path: <sender@example.org>\nX-Spam-Status: No, score=0.1\nX-Virus-Scanned: clamd\n\
                  Subject: local\n\nhi\n"
            );
        })
    });
}

/// The files in `user`'s Maildir, read.
fn mails(dir: &std::path::Path, user: &str) -> Vec<String> {
    let new = dir.join(format!("mail/{user}/Maildir/new"));
    let Ok(entries) = std::fs::read_dir(&new) else {
        return Vec::new();
    };
    entries.map(|e| String::from_utf8(std::fs::read(e.unwrap().path()).unwrap()).unwrap()).collect()
}

#[test]
fn one_delay_warning_once_the_message_is_pending_delay_warning_after() {
    testing::run(|| {
        Box::pin(async {
            let peer = Peer::start(Arc::new(|verb: &str, _: usize| match verb {
                "RCPT" => "451 4.2.0 try later\r\n".to_string(),
                _ => "250 2.0.0 ok\r\n".to_string(),
            }));
            let dir = testing::tempdir("deliver-delay");
            let extra = format!(
                "[delivery]\nsmarthost = \"127.0.0.1:{}\"\n[domains]\nlocal = [\"example.org\"]\n",
                peer.port
            );
            let config = testing::config_with(&dir, &extra, &["queue.delay_warning_after=30m"]);
            let t = testing::shard(config, START_MS).await;
            start_delivery(&t);
            let id = accept(&t, &["far@example.net"], b"Subject: slow\r\n\r\nx\r\n").await;
            wait_deferred(&t, &id).await;
            // 10 minutes old at the second attempt: no warning yet.
            t.manual.advance(Duration::from_secs(10 * 60));
            wait_for("the second attempt", || peer.commands("RCPT").len() == 2).await;
            testing::settle(100).await;
            assert!(mails(&dir, "sender").is_empty(), "no warning before 30 minutes");
            // 70 minutes old at the third: one warning.
            t.manual.advance(Duration::from_secs(60 * 60));
            wait_for("the third attempt", || peer.commands("RCPT").len() == 3).await;
            let warning = only_mail(&dir, "sender", "the delay warning").await;
            let warning = String::from_utf8(warning).unwrap();
            assert!(warning.contains("Subject: Delayed Mail (still being retried)\n"), "{warning}");
            assert!(warning.contains("Action: delayed\nStatus: 4.2.0\n"), "{warning}");
            let queue = t.shard.queue.clone();
            wait_for("the replacement after the third attempt", || {
                queue.entry(&id).is_some_and(|e| e.attempt_count == 3 && !e.in_flight)
            })
            .await;
            // The fourth attempt: the envelope says the warning went.
            t.manual.advance(Duration::from_secs(60 * 60));
            wait_for("the fourth attempt", || peer.commands("RCPT").len() == 4).await;
            testing::settle(200).await;
            assert_eq!(mails(&dir, "sender").len(), 1, "one warning per message");
        })
    });
}

#[test]
fn notify_success_to_a_next_hop_without_dsn_is_reported_relayed_and_never_passes_the_parameters() {
    testing::run(|| {
        Box::pin(async {
            let peer = Peer::start(Arc::new(|_: &str, _: usize| "250 2.0.0 ok\r\n".to_string()));
            let dir = testing::tempdir("deliver-relayed");
            let extra = format!(
                "[delivery]\nsmarthost = \"127.0.0.1:{}\"\n[domains]\nlocal = [\"example.org\"]\n",
                peer.port
            );
            let t = testing::shard(testing::config(&dir, &extra), START_MS).await;
            start_delivery(&t);
            let queue = &t.shard.queue;
            let mut writer = queue.create().await.unwrap();
            writer.write(b"Subject: tell me\r\n\r\nx\r\n").await.unwrap();
            let id = writer.id().to_string();
            let mut env = testing::envelope(&id, &["far@example.net", "quiet@example.net"], queue.clock().unix_ms());
            env.recipients[0].dsn = crate::smtp::dsn::RcptDsn {
                notify: Some(crate::smtp::dsn::Notify::SUCCESS),
                orcpt: Some("rfc822;far+2Bx@example.net".into()),
            };
            writer.commit(queue, env).await.unwrap();
            let report = String::from_utf8(only_mail(&dir, "sender", "the success report").await).unwrap();
            assert!(report.contains("Subject: Successful Mail Delivery Report\n"), "{report}");
            assert!(report.contains("Original-Recipient: rfc822; far+x@example.net\n"), "{report}");
            assert!(report.contains("Final-Recipient: rfc822; far@example.net\nAction: relayed\n"), "{report}");
            assert!(!report.contains("quiet@example.net\nAction"), "{report}");
            assert!(peer.commands("RCPT").iter().all(|c| !c.contains("NOTIFY")), "{:?}", peer.commands("RCPT"));
        })
    });
}
