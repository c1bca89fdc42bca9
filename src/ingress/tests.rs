//! The session driver over a real socket: what a client's bytes become in
//! the queue's hand-off, with the shard's manual clock.

use std::rc::Rc;

use crate::testing::{self, RawClient};

const START_MS: u64 = 1_800_000_000_000;

async fn listen(shard: &Rc<crate::shard::Shard>) -> u16 {
    let listener = glommio::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    glommio::spawn_local(super::accept_loop(shard.clone(), listener, super::listener::Listening::mx(shard))).detach();
    port
}

#[test]
fn a_transaction_is_committed_and_handed_to_delivery_with_parsed_addresses() {
    testing::run(|| {
        Box::pin(async {
            let dir = testing::tempdir("ingress-commit");
            let t = testing::shard(testing::config(&dir, ""), START_MS).await;
            let port = listen(&t.shard).await;
            let replies = testing::client(move || {
                let mut c = RawClient::connect(port);
                let mut replies = vec![c.reply()];
                for line in [
                    &b"EHLO client.test\r\n"[..],
                    b"MAIL FROM:<Alice@Example.ORG>\r\n",
                    b"RCPT TO:<bob@localhost>\r\n",
                    b"RCPT TO:<\"odd local\"@localhost>\r\n",
                    b"DATA\r\n",
                    b"Subject: driver\r\n\r\nbody line\r\n..dot\r\n.\r\n",
                    b"QUIT\r\n",
                ] {
                    replies.push(c.command(line));
                }
                replies
            })
            .await;
            assert!(replies[0].starts_with("220 "), "{replies:?}");
            assert!(
                replies[6].starts_with("250 2.0.0 Ok: queued as "),
                "{replies:?}"
            );
            let id = replies[6]
                .trim_end()
                .rsplit(' ')
                .next()
                .unwrap()
                .to_string();
            let env = t.shard.queue.take().await.unwrap();
            assert_eq!(env.id, id);
            assert_eq!(env.sender.to_string(), "<Alice@Example.ORG>");
            let rcpts: Vec<(String, Option<String>)> = env
                .recipients
                .iter()
                .map(|r| (r.address.local_part.clone(), r.address.domain.clone()))
                .collect();
            assert_eq!(rcpts[0], ("bob".to_string(), Some("localhost".to_string())));
            assert_eq!(rcpts[1].1.as_deref(), Some("localhost"));
            assert_eq!(env.arrival_unix_ms, START_MS, "time from the shard's clock");
            let crate::queue::Body::Inline(body) = &env.body else {
                panic!("a small message is inline")
            };
            let text = String::from_utf8_lossy(body);
            assert!(text.starts_with("Received: from client.test"), "{text}");
            assert!(
                text.ends_with("\r\nSubject: driver\r\n\r\nbody line\r\n.dot\r\n"),
                "{text}"
            );
            assert_eq!(t.shard.queue.handoff_counts(), (0, 0));
        })
    });
}

#[test]
fn a_refused_relay_recipient_leaves_nothing_in_the_queue() {
    testing::run(|| {
        Box::pin(async {
            let dir = testing::tempdir("ingress-relay");
            let t =
                testing::shard(testing::config(&dir, "[relay]\nnetworks = []\n"), START_MS).await;
            let port = listen(&t.shard).await;
            let replies = testing::client(move || {
                let mut c = RawClient::connect(port);
                c.reply();
                c.command(b"EHLO client.test\r\n");
                c.command(b"MAIL FROM:<a@example.org>\r\n");
                let refused = c.command(b"RCPT TO:<victim@elsewhere.example>\r\n");
                let data = c.command(b"DATA\r\n");
                (refused, data)
            })
            .await;
            assert!(replies.0.starts_with("550 5.7.1 "), "{replies:?}");
            assert!(
                replies.1.starts_with("554 ") || replies.1.starts_with("503 "),
                "{replies:?}"
            );
            testing::settle(50).await;
            assert_eq!(t.shard.queue.handoff_counts(), (0, 0));
            assert_eq!(t.shard.queue.live_count(), 0);
        })
    });
}

#[test]
fn the_session_count_follows_sessions_and_the_limit_refuses_with_421() {
    testing::run(|| {
        Box::pin(async {
            let dir = testing::tempdir("ingress-limit");
            let config = testing::config_with(&dir, "", &["server.max_sessions_per_shard=1"]);
            let t = testing::shard(config, START_MS).await;
            let port = listen(&t.shard).await;
            let (first, second) = testing::client(move || {
                let mut one = RawClient::connect(port);
                let first = one.reply();
                let mut two = RawClient::connect(port);
                let second = two.reply();
                one.command(b"QUIT\r\n");
                (first, second)
            })
            .await;
            assert!(first.starts_with("220 "), "{first}");
            assert!(second.starts_with("421 4.3.2 "), "{second}");
            testing::settle(50).await;
            assert_eq!(
                t.shard.sessions_active(),
                0,
                "every session that ended was counted out"
            );
        })
    });
}
