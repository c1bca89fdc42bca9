//! Table-driven tests of the router drivers, without sockets.

use std::path::{Path, PathBuf};

use super::drivers::{error_reply, split_subaddress};
use super::{Decision, Engine, Mode};
use crate::config::load_str;
use crate::smtp::reply::Enhanced;

struct Fixture {
    dir: PathBuf,
}

impl Fixture {
    fn new(name: &str) -> Fixture {
        let dir = std::env::temp_dir().join(format!("ringpost-route-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Fixture { dir }
    }

    fn file(&self, name: &str, text: &str) -> String {
        let path = self.dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }

    fn engine(&self, toml: &str) -> Engine {
        let toml = toml.replace("DIR", &self.dir.display().to_string());
        let config = load_str(Path::new("test.toml"), &toml, &[]).expect("config loads");
        Engine::build(&config).expect("engine builds")
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn route(engine: &Engine, address: &str) -> Decision {
    futures_lite::future::block_on(engine.route(address, "sender@example.net", Mode::Verify)).decision
}

/// The decision in one line: `local:alice@example.org`, `550 5.1.1 …`.
fn summary(decision: &Decision) -> String {
    match decision {
        Decision::Deliver { deliveries, .. } => deliveries
            .iter()
            .map(|d| match &d.next_hop {
                Some(hop) => format!("{}:{}@{hop}", d.transport, d.address),
                None => format!("{}:{}", d.transport, d.address),
            })
            .collect::<Vec<_>>()
            .join(" "),
        Decision::Reject(reply) | Decision::Defer(reply) => reply.summary(),
        Decision::Discard => "discard".into(),
    }
}

const LOCAL: &str = r#"
[domains]
local = ["example.org", "localhost"]
[route]
subaddress_separators = ["+", "-"]
"#;

#[test]
fn virtusertable_precedence_exact_then_detail_then_catch_all() {
    let f = Fixture::new("virtual");
    f.file(
        "virtusertable",
        "bob+sales@example.com  sales\nbob+*@example.com  bobplus\nbob@example.com  bob\n@example.com  error:5.1.1:550 Mailbox unknown on example.com\n\
         @example.net  %1%3@example.org\ninfo@example.net  discard\n",
    );
    f.file("users", "sales\nbobplus\nbob\nalice\nalice-x\n");
    let engine = f.engine(&format!(
        "{LOCAL}\n[[router]]\nname = \"virt\"\ndriver = \"virtual\"\nfile = \"DIR/virtusertable\"\n\
         [[router]]\nname = \"users\"\ndriver = \"local_users\"\nfile = \"DIR/users\"\n"
    ));
    let cases = [
        ("bob+sales@example.com", "local:sales@example.org"),
        ("bob+other@example.com", "local:bobplus@example.org"),
        ("bob@example.com", "local:bob@example.org"),
        ("carol@example.com", "550 5.1.1 Mailbox unknown on example.com"),
        ("alice@example.net", "local:alice@example.org"),
        ("info@example.net", "discard"),
        ("nobody@example.net", "550 5.1.1 <nobody@example.org>: Recipient address rejected: User unknown"),
        ("postmaster@example.org", "local:postmaster@example.org"),
        ("postmaster", "local:postmaster@example.org"),
        ("postmaster@example.com", "550 5.1.1 Mailbox unknown on example.com"),
    ];
    for (address, expected) in cases {
        assert_eq!(summary(&route(&engine, address)), expected, "{address}");
    }
}

#[test]
fn error_values_become_the_reply_verbatim() {
    let cases = [
        ("error:5.1.1:550 User unknown here", "550 5.1.1 User unknown here"),
        ("error:5.7.1:554 Go away", "554 5.7.1 Go away"),
        ("error:4.2.1:451 Try later", "451 4.2.1 Try later"),
        ("error:550 Plain", "550 5.1.1 Plain"),
    ];
    for (value, expected) in cases {
        assert_eq!(error_reply(value).expect("parses").summary(), expected, "{value}");
    }
    assert!(error_reply("alice").is_none());
}

#[test]
fn subaddress_separators_split_at_the_first_listed_one_present() {
    let seps = vec!["+".to_string(), "-".to_string()];
    assert_eq!(split_subaddress("bob+x-y", &seps), ("bob", Some(("+", "x-y"))));
    assert_eq!(split_subaddress("bob-x", &seps), ("bob", Some(("-", "x"))));
    assert_eq!(split_subaddress("bob", &seps), ("bob", None));
    assert_eq!(split_subaddress("+bob", &seps), ("+bob", None));
    assert_eq!(split_subaddress("bob-x", &["+".to_string()]), ("bob-x", None));
}

#[test]
fn local_users_choose_their_valid_subaddresses() {
    let f = Fixture::new("users");
    // alice: any detail; bob: none; carol: only work and lists; dave+news listed as a key.
    f.file("users", "alice\nbob none\ncarol work, lists\ndave none\ndave+news\n");
    let engine =
        f.engine(&format!("{LOCAL}\n[[router]]\nname = \"users\"\ndriver = \"local_users\"\nfile = \"DIR/users\"\n"));
    let cases = [
        ("alice+anything@example.org", true),
        ("alice-x@example.org", true),
        ("bob@example.org", true),
        ("bob+x@example.org", false),
        ("carol+work@example.org", true),
        ("carol-lists@example.org", true),
        ("carol+play@example.org", false),
        ("dave+news@example.org", true),
        ("dave+other@example.org", false),
        ("eve@example.org", false),
    ];
    for (address, ok) in cases {
        let decision = route(&engine, address);
        assert_eq!(matches!(decision, Decision::Deliver { .. }), ok, "{address}: {}", summary(&decision));
    }
    assert_eq!(summary(&route(&engine, "Alice+X@Example.org")), "local:alice@example.org");
}

#[test]
fn rewrite_routes_again_from_the_top_and_loops_stop() {
    let f = Fixture::new("rewrite");
    f.file("users", "alice\n");
    let engine = f.engine(&format!(
        "{LOCAL}\n[[router]]\nname = \"rw\"\ndriver = \"rewrite\"\n\
         rules = [[\"^(.*)@old\\\\.example$\", \"$1@example.org\"], [\"^ping@(.*)$\", \"pong@$1\"], [\"^pong@(.*)$\", \"ping@$1\"]]\n\
         [[router]]\nname = \"users\"\ndriver = \"local_users\"\nfile = \"DIR/users\"\n"
    ));
    assert_eq!(summary(&route(&engine, "alice@old.example")), "local:alice@example.org");
    let loop_decision = route(&engine, "ping@example.org");
    assert_eq!(summary(&loop_decision), "550 5.4.6 Routing loop: more than 10 rewrites of <ping@example.org>",);
}

#[test]
fn aliases_fan_out_include_and_loops_are_detected() {
    let f = Fixture::new("aliases");
    let include = f.file("team.list", "# the team\nalice\nbob@example.org\n");
    f.file(
        "aliases",
        &format!(
            "team: :include:{include}, carol\nroot: root, admin\nadmin: alice\nloop1: loop2\nloop2: loop1\n\
             pipe: \"|/usr/bin/handler --x\", /var/log/archive\nnull: /dev/null\nbroken: nobody\n"
        ),
    );
    f.file("users", "alice\nbob\ncarol\nroot\n");
    let engine = f.engine(&format!(
        "{LOCAL}\n[[router]]\nname = \"aliases\"\ndriver = \"aliases\"\nfile = \"DIR/aliases\"\n\
         [[router]]\nname = \"users\"\ndriver = \"local_users\"\nfile = \"DIR/users\"\n"
    ));
    let cases = [
        ("team@example.org", "local:alice@example.org local:bob@example.org local:carol@example.org"),
        ("root@example.org", "local:root@example.org local:alice@example.org"),
        ("loop1@example.org", "550 5.4.6 Alias loop: loop1@example.org -> loop2@example.org -> loop1@example.org"),
        ("pipe@example.org", "pipe:/usr/bin/handler --x file:/var/log/archive"),
        ("null@example.org", "discard"),
        ("broken@example.org", "550 5.1.1 <nobody@example.org>: Recipient address rejected: User unknown"),
        ("team+x@example.org", "local:alice@example.org local:bob@example.org local:carol@example.org"),
    ];
    for (address, expected) in cases {
        assert_eq!(summary(&route(&engine, address)), expected, "{address}");
    }
}

#[test]
fn mailertable_matches_domain_then_parent_subdomains() {
    let f = Fixture::new("mailertable");
    f.file(
        "mailertable",
        "example.com  smtp:[192.0.2.1]:2525\n.example.com  relay:inner.example.com\n.net  esmtp:gw.example.net\n\
         blocked.example  error:5.1.2:550 We do not send there\nlocal.example  local:\n",
    );
    let engine = f.engine(&format!(
        "{LOCAL}\n[[router]]\nname = \"mt\"\ndriver = \"mailertable\"\nfile = \"DIR/mailertable\"\n\
         [[router]]\nname = \"mx\"\ndriver = \"dnslookup\"\n"
    ));
    let cases = [
        ("a@example.com", "smtp:a@example.com@[192.0.2.1]:2525"),
        ("a@sub.example.com", "relay:a@sub.example.com@inner.example.com"),
        ("a@deep.sub.example.com", "relay:a@deep.sub.example.com@inner.example.com"),
        ("a@other.net", "esmtp:a@other.net@gw.example.net"),
        ("a@blocked.example", "550 5.1.2 We do not send there"),
        ("a@local.example", "local:a@local.example"),
        ("a@elsewhere.org", "smtp:a@elsewhere.org"),
        ("a@notexample.com", "smtp:a@notexample.com"),
    ];
    for (address, expected) in cases {
        assert_eq!(summary(&route(&engine, address)), expected, "{address}");
    }
}

#[test]
fn conditions_and_smarthost() {
    let f = Fixture::new("conditions");
    let engine = f.engine(&format!(
        "{LOCAL}\n[[router]]\nname = \"vip\"\ndriver = \"smarthost\"\nhost = \"vip.example:2525\"\nsenders = [\"@example.net\"]\ndomains = [\".example.com\"]\n\
         [[router]]\nname = \"out\"\ndriver = \"smarthost\"\nhost = \"out.example:25\"\n"
    ));
    assert_eq!(summary(&route(&engine, "a@b.example.com")), "smtp:a@b.example.com@vip.example:2525");
    assert_eq!(summary(&route(&engine, "a@example.com")), "smtp:a@example.com@out.example:25");
    let other = futures_lite::future::block_on(engine.route("a@b.example.com", "x@example.org", Mode::Verify));
    assert_eq!(summary(&other.decision), "smtp:a@b.example.com@out.example:25");
    // No router for local domains: unrouteable.
    assert_eq!(summary(&route(&engine, "a@example.org")), "550 5.1.1 <a@example.org>: Unrouteable address");
}

#[test]
fn cdb_and_sqlite_tables_answer_like_text() {
    let f = Fixture::new("sources");
    let text = f.file("virtusertable", "bob@example.com bob\n@example.com error:5.1.1:550 No such user\n");
    super::table::makemap(Path::new(&text)).expect("makemap");
    let db = f.dir.join("users.sqlite");
    let connection = rusqlite::Connection::open(&db).unwrap();
    connection
        .execute_batch(
            "CREATE TABLE users (name TEXT PRIMARY KEY, details TEXT); INSERT INTO users VALUES ('bob', '');",
        )
        .unwrap();
    drop(connection);
    let engine = f.engine(&format!(
        "{LOCAL}\n[[router]]\nname = \"virt\"\ndriver = \"virtual\"\nfile = \"DIR/virtusertable.cdb\"\n\
         [[router]]\nname = \"users\"\ndriver = \"local_users\"\nsource = \"sqlite:DIR/users.sqlite\"\nquery = \"SELECT details FROM users WHERE name = ?1\"\n"
    ));
    let results = glommio::LocalExecutorBuilder::default()
        .spawn(move || async move {
            let mut out = Vec::new();
            for address in ["bob@example.com", "carol@example.com", "bob@example.org", "carol@example.org"] {
                out.push(summary(&engine.route(address, "", Mode::Verify).await.decision));
            }
            out
        })
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(
        results,
        vec![
            "local:bob@example.org".to_string(),
            "550 5.1.1 No such user".to_string(),
            "local:bob@example.org".to_string(),
            "550 5.1.1 <carol@example.org>: Recipient address rejected: User unknown".to_string(),
        ]
    );
}

#[test]
fn lookup_errors_defer_with_451() {
    let f = Fixture::new("errors");
    let db = f.dir.join("users.sqlite");
    let connection = rusqlite::Connection::open(&db).unwrap();
    connection.execute_batch("CREATE TABLE users (name TEXT);").unwrap();
    drop(connection);
    let engine = f.engine(&format!(
        "{LOCAL}\n[[router]]\nname = \"users\"\ndriver = \"local_users\"\nsource = \"sqlite:DIR/users.sqlite\"\nquery = \"SELECT name FROM users WHERE name = ?1\"\n"
    ));
    rusqlite::Connection::open(&db).unwrap().execute_batch("DROP TABLE users;").unwrap();
    let decision = glommio::LocalExecutorBuilder::default()
        .spawn(move || async move { engine.route("bob@example.org", "", Mode::Verify).await.decision })
        .unwrap()
        .join()
        .unwrap();
    match decision {
        Decision::Defer(reply) => {
            assert_eq!((reply.code, reply.enhanced), (451, Some(Enhanced(4, 3, 0))));
        }
        other => panic!("expected a deferral, got {other:?}"),
    }
}

#[test]
fn broken_tables_are_refused_with_file_and_line() {
    let f = Fixture::new("broken");
    f.file("aliases", "ok: a\n  continued\n:bad entry\n");
    let toml = format!("{LOCAL}\n[[router]]\nname = \"a\"\ndriver = \"aliases\"\nfile = \"DIR/aliases\"\n")
        .replace("DIR", &f.dir.display().to_string());
    let config = load_str(Path::new("test.toml"), &toml, &[]).unwrap();
    let error = Engine::build(&config).err().expect("refused");
    assert!(error.ends_with("aliases:3: entry without a key"), "{error}");
    assert!(error.starts_with("router a: "), "{error}");
}

#[test]
fn next_hops_as_socket_addresses() {
    assert_eq!(super::socket_host("[192.0.2.1]:2525"), "192.0.2.1:2525");
    assert_eq!(super::socket_host("mx.example"), "mx.example:25");
    assert_eq!(super::socket_host("[::1]:26"), "[::1]:26");
}
