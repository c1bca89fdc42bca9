//! Unit tests of the Sieve module: lexer and parser errors with positions,
//! matcher, address parsing, encoded-words, limits, semantics of the
//! actions, the byte form round trip, and a seeded no-panic test over
//! random and mutated scripts.

use super::message::{decode_words, parse_addresses, parse_header};
use super::*;

const MSG: &[u8] = b"From: \"Joe Q. Public\" <joe+lists@Example.COM>\r\n\
To: me@ex.org, (comment) Other <other@ex.org>\r\n\
Cc: undisclosed-recipients:;\r\n\
Subject: =?UTF-8?B?SGVsbG8gd8O2cmxk?= and\r\n =?ISO-8859-1?Q?caf=E9?=\r\n\
X-Spam-Score: 7\r\n\
\r\n\
body\r\n";

fn input(sender: &str, msg: Option<&'static [u8]>) -> Input<'static> {
    Input {
        envelope: Envelope {
            sender: sender.into(),
            recipient: "me+tag@ex.org".into(),
            user_addresses: vec!["me@ex.org".into()],
            client_ip: None,
        },
        message: msg.map(Message::from_whole),
    }
}

fn run(script: &str, sender: &str, msg: Option<&'static [u8]>) -> Outcome {
    let limits = Limits::default();
    let s = match compile(script.as_bytes(), &limits) {
        Ok(s) => s,
        Err(e) => panic!("compile failed: {e}"),
    };
    evaluate(&s, &input(sender, msg), &limits)
}

fn done(script: &str) -> Actions {
    match run(script, "joe@example.com", Some(MSG)) {
        Outcome::Done(a) => a,
        o => panic!("unexpected {o:?}"),
    }
}

fn lines(script: &str) -> Vec<String> {
    let a = done(script);
    let mut v: Vec<String> = a.list.iter().map(|x| x.to_string()).collect();
    if a.implicit_keep {
        v.push("implicit keep".into());
    }
    v
}

fn compile_err(script: &str) -> CompileError {
    match compile(script.as_bytes(), &Limits::default()) {
        Ok(_) => panic!("compiled: {script}"),
        Err(e) => e,
    }
}

#[test]
fn lexer_strings_and_numbers() {
    let t = lexer::tokenize(b"\"a\\\"b\\\\c\\d\" 10K 2M 1G text: # c\r\nline\r\n..dot\r\n.\r\n").unwrap_or_default();
    let toks: Vec<_> = t.into_iter().map(|t| t.tok).collect();
    assert_eq!(
        toks,
        vec![
            lexer::Tok::Str("a\"b\\cd".into()),
            lexer::Tok::Number(10 << 10),
            lexer::Tok::Number(2 << 20),
            lexer::Tok::Number(1 << 30),
            lexer::Tok::Str("line\n.dot\n".into()),
        ]
    );
    assert!(lexer::tokenize(b"99999999999999999999999").is_err());
    assert!(lexer::tokenize(b"17179869184G").is_err(), "over 2^64");
    assert_eq!(lexer::tokenize(b"5G").map(|t| t.len()), Ok(1));
}

#[test]
fn errors_have_positions() {
    let e = compile_err("keep;\n  frobnicate;\n");
    assert_eq!((e.line, e.column), (2, 3));
    assert_eq!(e.to_string(), "2:3: unknown command 'frobnicate'");
    let e = compile_err("require \"nonsense\";");
    assert_eq!((e.line, e.column), (1, 1));
    let e = compile_err("if true {\n keep;\n");
    assert_eq!(e.line, 3);
    let e = compile_err("keep;\n/* open");
    assert_eq!((e.line, e.column), (2, 1));
    let e = compile_err("if header :is \"a\" \"b\" keep;");
    assert_eq!(e.line, 1);
    let e = compile_err("keep;\nfileinto \"x\";");
    assert_eq!((e.line, e.column), (2, 1));
    assert!(e.message.contains("fileinto"));
    let e = compile_err("if foo { keep; }");
    assert_eq!((e.line, e.column), (1, 4));
    compile_err("elsif true { keep; }");
    compile_err("keep; require \"fileinto\";");
    compile_err("if size :over 1 :under 2 { keep; }");
    compile_err("if header :is :contains \"a\" \"b\" { keep; }");
    compile_err("if header :frob \"a\" \"b\" { keep; }");
    compile_err("require \"relational\"; if header :count \"xx\" \"a\" \"1\" { keep; }");
    compile_err("if address :user \"to\" \"a\" { keep; }");
    compile_err("require \"variables\"; set \"a b\" \"c\";");
    compile_err("require \"envelope\"; if envelope \"bogus\" \"x\" { keep; }");
    compile_err("redirect \"not an address\";");
    compile_err("if header :comparator \"i;ascii-numeric\" :is \"a\" \"1\" { keep; }");
    compile_err("keep");
    let e = compile_err("\nif address \"subject\" \"x\" { keep; }");
    assert_eq!((e.line, e.column), (2, 4));
    assert!(e.message.contains("not allowed for the address test"));
}

#[test]
fn nesting_and_size_limits() {
    let deep = "if true { ".repeat(40) + &"}".repeat(40);
    assert!(compile_err(&deep).message.contains("nested"));
    let deep_not = format!("if {} true {{ keep; }}", "not ".repeat(100));
    assert!(compile_err(&deep_not).message.contains("nested"));
    let ok = "if true { ".repeat(10) + &"}".repeat(10);
    assert!(compile(ok.as_bytes(), &Limits::default()).is_ok());
    let limits = Limits { max_script_size: 10, ..Limits::default() };
    assert!(compile(b"keep; keep; keep;", &limits).is_err());
}

#[test]
fn step_and_redirect_limits() {
    let limits = Limits { max_steps: 50, ..Limits::default() };
    let script = "require \"variables\";\n".to_string() + &"set \"a\" \"b\";\n".repeat(100);
    let s = compile(script.as_bytes(), &limits).ok();
    let s = s.as_ref().map(|s| evaluate(s, &input("a@b.c", None), &limits));
    assert!(matches!(s, Some(Outcome::Error(_))));
    let r = run(
        "redirect \"a@x.org\"; redirect \"b@x.org\"; redirect \"c@x.org\"; redirect \"d@x.org\"; redirect \"e@x.org\";",
        "a@b.c",
        None,
    );
    assert!(matches!(r, Outcome::Error(e) if e.contains("redirect")));
    // The same target twice is one redirect.
    assert_eq!(lines("redirect \"a@x.org\"; redirect \"a@X.org\";"), vec!["redirect \"a@x.org\""]);
    // A pathological pattern is stopped by the budget, not by time.
    let long = "a".repeat(3000);
    let script = format!("require \"variables\"; if string :matches \"{long}\" \"*a*a*a*a*a*a*a*b\" {{ discard; }}");
    assert!(matches!(run(&script, "a@b.c", None), Outcome::Error(_) | Outcome::Done(_)));
}

#[test]
fn matcher_glob() {
    use compile::Comparator::*;
    let m = |c, v: &str, k: &str| matcher::matches(c, v, k, &mut 100_000).ok().flatten();
    assert_eq!(m(Casemap, "Hello World", "hello*"), Some(vec![" World".into()]));
    assert_eq!(m(Octet, "Hello World", "hello*"), None);
    assert_eq!(m(Casemap, "a*b", "a\\*b"), Some(vec![]));
    assert_eq!(m(Casemap, "axb", "a\\*b"), None);
    assert_eq!(m(Casemap, "abc", "a?c"), Some(vec!["b".into()]));
    assert_eq!(m(Casemap, "äbc", "?bc"), Some(vec!["ä".into()]));
    assert_eq!(m(Casemap, "", "*"), Some(vec!["".into()]));
    assert_eq!(m(Casemap, "x", ""), None);
    // Non-greedy (Pigeonhole tests/extensions/variables/match.svtest "RFC - not greedy").
    let caps = m(Casemap, "frop.......frop.........frop....", "?*frop*");
    assert_eq!(caps, Some(vec!["f".into(), "rop.......".into(), ".........frop....".into()]));
    assert!(matcher::contains(Casemap, "Hello", "ELL"));
    assert!(!matcher::contains(Octet, "Hello", "ELL"));
}

#[test]
fn matcher_numeric() {
    use compile::Comparator::Numeric;
    use std::cmp::Ordering::*;
    assert_eq!(matcher::order(Numeric, "10", "9"), Greater);
    assert_eq!(matcher::order(Numeric, "007", "7"), Equal);
    assert_eq!(matcher::order(Numeric, "abc", "99999"), Greater);
    assert_eq!(matcher::order(Numeric, "abc", "x"), Equal);
    assert_eq!(matcher::order(Numeric, "12abc", "12"), Equal);
}

#[test]
fn addresses() {
    let a = parse_addresses("\"Joe Q. Public\" <joe@example.com>, Mary <mary@x.net>, jdoe@one.test (comment)");
    let all: Vec<_> = a.iter().map(|a| a.all.clone()).collect();
    assert_eq!(all, vec!["joe@example.com", "mary@x.net", "jdoe@one.test"]);
    let a = parse_addresses("A Group:Ed Jones <c@a.test>,joe@where.test,John <jdoe@one.test>; , x@y.z");
    let all: Vec<_> = a.iter().map(|a| a.all.clone()).collect();
    assert_eq!(all, vec!["c@a.test", "joe@where.test", "jdoe@one.test", "x@y.z"]);
    let a = parse_addresses("undisclosed-recipients:;");
    assert_eq!(a, vec![message::Address { all: "undisclosed-recipients:;".into(), parts: None }]);
    assert_eq!(parse_addresses(" "), vec![message::Address { all: "".into(), parts: None }]);
    let a = parse_addresses("<@route.test,@other.test:user@final.test>");
    assert_eq!(a[0].parts, Some(("user".into(), "final.test".into())));
    let a = parse_addresses("\"john doe\"@quoted.test");
    assert_eq!(a[0].parts, Some(("john doe".into(), "quoted.test".into())));
    assert_eq!(a[0].all, "\"john doe\"@quoted.test");
    let a = parse_addresses("\"joe\"@quoted.test");
    assert_eq!(a[0].all, "joe@quoted.test");
    let a = parse_addresses("not an address");
    assert_eq!(a, vec![message::Address { all: "not an address".into(), parts: None }]);
    // Items that are not addresses are dropped when others are.
    let a = parse_addresses("just words, x@y.z, Friends: ;");
    assert_eq!(a, vec![message::Address { all: "x@y.z".into(), parts: Some(("x".into(), "y.z".into())) }]);
    let _ = parse_addresses("<<<>>>,,,::;;@@@\"unterminated (open [x");
}

#[test]
fn encoded_words_and_unfolding() {
    assert_eq!(decode_words("=?UTF-8?B?SGVsbG8gd8O2cmxk?="), "Hello wörld");
    assert_eq!(decode_words("=?iso-8859-1?q?caf=E9_au_lait?="), "café au lait");
    assert_eq!(decode_words("=?utf-8?q?a?= =?utf-8?q?b?="), "ab");
    assert_eq!(decode_words("x =?utf-8?q?a?= y"), "x a y");
    assert_eq!(decode_words("=?bogus?q?a?="), "=?bogus?q?a?=");
    assert_eq!(decode_words("=?utf-8?x?a?="), "=?utf-8?x?a?=");
    let f = parse_header(MSG);
    assert_eq!(f.len(), 5);
    assert_eq!(message::decoded_value(&f[3].raw), "Hello wörld and café");
    assert_eq!(lines("if header :is \"subject\" \"Hello wörld and café\" { discard; }"), vec!["discard"]);
}

#[test]
fn tests_and_semantics() {
    assert_eq!(lines("keep;"), vec!["keep"]);
    assert_eq!(lines(""), vec!["implicit keep"]);
    assert_eq!(lines("discard;"), vec!["discard"]);
    assert_eq!(lines("require \"fileinto\"; keep; fileinto \"inbox\"; keep;"), vec!["keep"]);
    assert_eq!(
        lines("require [\"fileinto\", \"copy\"]; fileinto :copy \"INBOX\"; keep;"),
        vec!["fileinto :copy \"INBOX\""]
    );
    assert_eq!(
        lines("require [\"fileinto\", \"copy\"]; fileinto :copy \"A\"; fileinto \"B\"; fileinto \"B\";"),
        vec!["fileinto :copy \"A\"", "fileinto \"B\""]
    );
    assert_eq!(
        lines("require [\"copy\"]; redirect :copy \"x@y.org\";"),
        vec!["redirect :copy \"x@y.org\"", "implicit keep"]
    );
    assert_eq!(lines("if address :domain :is \"from\" \"example.com\" { discard; }"), vec!["discard"]);
    assert_eq!(lines("if address :localpart \"from\" \"joe+lists\" { discard; }"), vec!["discard"]);
    assert_eq!(
        lines("require \"subaddress\"; if address :detail \"from\" \"lists\" { if address :user \"from\" \"JOE\" { discard; } }"),
        vec!["discard"]
    );
    assert_eq!(lines("if address :all :is \"to\" \"other@ex.org\" { discard; }"), vec!["discard"]);
    assert_eq!(lines("if exists [\"from\", \"x-spam-score\"] { discard; }"), vec!["discard"]);
    assert_eq!(lines("if exists [\"from\", \"x-nope\"] { discard; }"), vec!["implicit keep"]);
    assert_eq!(lines("if size :under 1K { discard; }"), vec!["discard"]);
    assert_eq!(lines("if size :over 1K { discard; }"), vec!["implicit keep"]);
    assert_eq!(lines("if HEADER :CONTAINS \"SUBJECT\" \"CAFÉ\" { discard; }"), vec!["implicit keep"]);
    assert_eq!(lines("if header :contains \"subject\" \"CAFé\" { discard; }"), vec!["discard"]);
    assert_eq!(lines("if not anyof (false, header :is \"x\" \"y\") { stop; } discard;"), vec!["implicit keep"]);
    assert_eq!(lines("if allof (true, exists \"to\") { discard; stop; } keep;"), vec!["discard"]);
    assert_eq!(
        lines("require [\"relational\", \"comparator-i;ascii-numeric\"]; if header :value \"gt\" :comparator \"i;ascii-numeric\" \"x-spam-score\" \"5\" { discard; }"),
        vec!["discard"]
    );
    assert_eq!(
        lines("require [\"relational\", \"comparator-i;ascii-numeric\"]; if address :count \"eq\" :comparator \"i;ascii-numeric\" [\"to\", \"cc\"] \"3\" { discard; }"),
        vec!["discard"]
    );
    assert_eq!(
        lines("require [\"envelope\", \"subaddress\"]; if envelope :detail \"to\" \"tag\" { discard; }"),
        vec!["discard"]
    );
}

#[test]
fn reject_conflicts() {
    let r = run("require [\"reject\", \"fileinto\"]; reject \"no\"; fileinto \"x\";", "a@b.c", Some(MSG));
    assert!(matches!(r, Outcome::Error(e) if e.contains("conflicts")));
    let r = run("require \"reject\"; keep; reject \"no\";", "a@b.c", Some(MSG));
    assert!(matches!(r, Outcome::Error(_)));
    assert_eq!(lines("require \"ereject\"; ereject \"go away\";"), vec!["ereject \"go away\""]);
    assert_eq!(
        lines("require \"reject\"; discard; reject text:\nline 1\n..\n.\n;"),
        vec!["discard", "reject \"line 1\\n.\\n\""]
    );
}

#[test]
fn variables() {
    assert_eq!(
        lines("require [\"variables\", \"fileinto\"]; if header :matches \"from\" \"*<*@*>\" { fileinto \"lists.${2}.${3}\"; }"),
        vec!["fileinto \"lists.joe+lists.Example.COM\""]
    );
    assert_eq!(
        lines("require [\"variables\", \"fileinto\"]; set :upperfirst :lower \"a\" \"hELLO\"; set :length \"n\" \"${a}\"; fileinto \"${A}-${n}-${unset}-${}-${0}\";"),
        vec!["fileinto \"Hello-5--${}-\""]
    );
    assert_eq!(
        lines("require [\"variables\", \"fileinto\"]; set :quotewildcard \"q\" \"a*b?\\\\\"; fileinto \"${q}\";"),
        vec!["fileinto \"a\\\\*b\\\\?\\\\\\\\\""]
    );
    assert_eq!(
        lines(
            "require [\"variables\", \"relational\"]; if string :count \"eq\" [\"a\", \"\", \"b\"] \"2\" { discard; }"
        ),
        vec!["discard"]
    );
}

#[test]
fn envelope_only() {
    let s = "require [\"envelope\", \"reject\"]; if envelope :is \"from\" \"a@b.org\" { reject \"x\"; } elsif header :contains \"subject\" \"y\" { discard; }";
    assert!(matches!(run(s, "a@b.org", None), Outcome::Done(a) if a.list.len() == 1 && !a.implicit_keep));
    assert_eq!(run(s, "c@b.org", None), Outcome::NeedsContent);
    assert_eq!(run("require \"vacation\"; vacation \"away\";", "c@b.org", None), Outcome::NeedsContent);
    assert_eq!(run("if size :over 1 { keep; }", "c@b.org", None), Outcome::NeedsContent);
    let compiled = compile(s.as_bytes(), &Limits::default()).ok();
    assert_eq!(compiled.as_ref().map(needs_content_statically), Some(true));
    let compiled = compile(b"require \"envelope\"; if envelope \"to\" \"x@y\" { discard; }", &Limits::default()).ok();
    assert_eq!(compiled.as_ref().map(needs_content_statically), Some(false));
}

#[test]
fn vacation_rules() {
    let v = |sender: &str, msg: &'static [u8]| -> Option<String> {
        match run("require \"vacation\"; vacation :days 3 :addresses \"alias@ex.org\" \"away\";", sender, Some(msg)) {
            Outcome::Done(a) => match a.list.first() {
                Some(Action::Vacation(v)) => v.skipped.clone(),
                o => panic!("no vacation: {o:?}"),
            },
            o => panic!("unexpected {o:?}"),
        }
    };
    assert_eq!(v("joe@example.com", MSG), None);
    assert!(v("", MSG).is_some());
    assert!(v("owner-list@example.com", MSG).is_some());
    assert!(v("joe@example.com", b"To: me@ex.org\r\nList-Id: <l.x>\r\n\r\n").is_some());
    assert!(v("joe@example.com", b"To: me@ex.org\r\nAuto-Submitted: auto-replied\r\n\r\n").is_some());
    assert_eq!(v("joe@example.com", b"To: me@ex.org\r\nAuto-Submitted: no\r\n\r\n"), None);
    assert!(v("joe@example.com", b"To: me@ex.org\r\nPrecedence: bulk\r\n\r\n").is_some());
    assert!(v("joe@example.com", b"To: someone@else.org\r\n\r\n").is_some());
    assert_eq!(v("joe@example.com", b"To: someone@else.org\r\nCc: <ALIAS@ex.org>\r\n\r\n"), None);
    assert_eq!(v("joe@example.com", b"Resent-To: me@ex.org\r\n\r\n"), None);
    assert!(v("joe@example.com", b"To: me@ex.org\r\nX-Auto-Response-Suppress: DR, OOF, RN\r\n\r\n").is_some());
    assert_eq!(v("joe@example.com", b"To: me@ex.org\r\nX-Auto-Response-Suppress: DR\r\n\r\n"), None);
    let r = run("require [\"vacation\", \"reject\"]; reject \"x\"; vacation \"y\";", "a@b.c", Some(MSG));
    assert!(matches!(r, Outcome::Error(_)));
}

#[test]
fn actions_round_trip() {
    let a = Actions {
        list: vec![
            Action::Keep,
            Action::FileInto { folder: "Ünïcode/F".into(), copy: true },
            Action::Redirect { address: "a@b.c".into(), copy: false },
            Action::Discard,
            Action::Reject { text: "no\nway".into(), extended: true },
            Action::Vacation(Vacation {
                to: "s@x".into(),
                from: Some("me@y".into()),
                subject: "Auto: hi".into(),
                reason: "away".into(),
                mime: false,
                days: 300,
                handle: "h".into(),
                addresses: vec!["me@y".into(), "alias@y".into()],
                skipped: None,
            }),
        ],
        implicit_keep: true,
    };
    let b = a.to_bytes();
    assert_eq!(Actions::from_bytes(&b), Ok(a.clone()));
    for n in 0..b.len() {
        assert!(Actions::from_bytes(&b[..n]).is_err());
    }
    let mut extra = b.clone();
    extra.push(0);
    assert!(Actions::from_bytes(&extra).is_err());
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    for _ in 0..5000 {
        let mut m = b.clone();
        let i = (rng.next() as usize) % m.len();
        m[i] = rng.next() as u8;
        let _ = Actions::from_bytes(&m);
        let len = (rng.next() % 64) as usize;
        let junk: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        let _ = Actions::from_bytes(&junk);
    }
    let empty = Actions::default();
    assert_eq!(Actions::from_bytes(&empty.to_bytes()), Ok(empty));
}

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

const SEEDS: &[&str] = &[
    "require [\"fileinto\", \"variables\", \"relational\", \"subaddress\", \"envelope\", \"copy\", \"vacation\", \"reject\"];\n",
    "if header :matches \"subject\" \"*[*]*\" { fileinto \"${2}\"; }\n",
    "if address :user :is [\"from\", \"to\"] \"joe\" { redirect :copy \"x@y.org\"; } elsif true { stop; } else { discard; }\n",
    "if anyof (not exists \"x\", size :over 10K, envelope :domain \"from\" \"a.b\") { keep; }\n",
    "set :lower :length \"v\" \"${0}abc\"; if string :value \"ge\" \"${v}\" \"3\" { reject text:\nno\n..\n.\n; }\n",
    "vacation :days 2 :subject \"s\" :addresses [\"a@b\"] :mime :handle \"h\" \"reason\";\n",
    "/* c */ # x\n if header :count \"gt\" :comparator \"i;ascii-numeric\" \"received\" \"5\" { discard; }\n",
];

#[test]
fn never_panics() {
    let limits = Limits::default();
    let corpus: String = SEEDS.concat();
    let alphabet: &[u8] = b"\"\\[](){},;:*?${}#/\n\r\t .KMG0123456789abcdefghijklmnopqrstuvwxyz=@<>\xc3\xa4\xff";
    let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
    // SIEVE_RANDOM_CASES=1000000 for a longer run.
    let cases: u32 = std::env::var("SIEVE_RANDOM_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    for case in 0..cases {
        let text: Vec<u8> = match case % 4 {
            0 => {
                let len = (rng.next() % 200) as usize;
                (0..len).map(|_| rng.next() as u8).collect()
            }
            1 => {
                let len = (rng.next() % 300) as usize;
                (0..len).map(|_| alphabet[(rng.next() as usize) % alphabet.len()]).collect()
            }
            _ => {
                let mut t = corpus.as_bytes().to_vec();
                for _ in 0..(1 + rng.next() % 8) {
                    if t.is_empty() {
                        break;
                    }
                    let i = (rng.next() as usize) % t.len();
                    match rng.next() % 4 {
                        0 => t[i] = alphabet[(rng.next() as usize) % alphabet.len()],
                        1 => {
                            t.remove(i);
                        }
                        2 => t.insert(i, alphabet[(rng.next() as usize) % alphabet.len()]),
                        _ => {
                            let j = (rng.next() as usize) % t.len();
                            let (a, b) = (i.min(j), i.max(j));
                            let chunk = t[a..b].to_vec();
                            t.splice(b..b, chunk);
                        }
                    }
                }
                t
            }
        };
        if let Ok(s) = compile(&text, &limits) {
            let _ = evaluate(&s, &input("a@b.c", Some(MSG)), &limits);
            let _ = evaluate(&s, &input("", None), &limits);
        }
    }
    let deep = "(".repeat(100_000);
    assert!(compile(format!("if anyof {deep}").as_bytes(), &limits).is_err());
}

#[test]
fn script_is_shareable() {
    fn assert_send_sync<T: Send + Sync + Clone>() {}
    assert_send_sync::<Script>();
}

#[test]
fn action_and_variable_limits() {
    let limits = Limits { max_actions: 3, ..Limits::default() };
    let s =
        compile(b"require \"fileinto\"; fileinto \"a\"; fileinto \"b\"; fileinto \"c\"; fileinto \"d\";", &limits).ok();
    let r = s.as_ref().map(|s| evaluate(s, &input("a@b.c", None), &limits));
    assert!(matches!(r, Some(Outcome::Error(e)) if e.contains("too many actions")));
    let limits = Limits { max_variables: 2, ..Limits::default() };
    let s =
        compile(b"require \"variables\"; set \"a\" \"1\"; set \"b\" \"2\"; set \"a\" \"3\"; set \"c\" \"4\";", &limits)
            .ok();
    let r = s.as_ref().map(|s| evaluate(s, &input("a@b.c", None), &limits));
    assert!(matches!(r, Some(Outcome::Error(e)) if e.contains("too many variables")));
    let limits = Limits { max_string_len: 10, ..Limits::default() };
    let script = b"require [\"variables\", \"fileinto\"]; set \"a\" \"0123456789abcdef\"; set \"b\" \"${a}${a}\"; fileinto \"${b}\";";
    let s = compile(script, &limits).ok();
    let r = s.as_ref().map(|s| evaluate(s, &input("a@b.c", None), &limits));
    let want =
        Actions { list: vec![Action::FileInto { folder: "0123456789".into(), copy: false }], implicit_keep: false };
    assert_eq!(r, Some(Outcome::Done(want)));
}

#[test]
fn null_sender_envelope() {
    let s = "require [\"envelope\", \"fileinto\"];\n\
             if envelope :is \"from\" \"\" { fileinto \"null\"; }\n\
             if envelope :localpart :is \"from\" \"\" { fileinto \"local\"; }";
    match run(s, "", None) {
        Outcome::Done(a) => assert_eq!(a.list, vec![Action::FileInto { folder: "null".into(), copy: false }]),
        o => panic!("unexpected {o:?}"),
    }
}

#[test]
fn error_display_and_cli_format() {
    let e = CompileError { line: 3, column: 7, message: "unknown test 'x'".into() };
    assert_eq!(e.to_string(), "3:7: unknown test 'x'");
    assert_eq!(
        Action::FileInto { folder: "a\"b\\c\n".into(), copy: true }.to_string(),
        "fileinto :copy \"a\\\"b\\\\c\\n\""
    );
    assert_eq!(Action::Reject { text: "t".into(), extended: true }.to_string(), "ereject \"t\"");
    assert_eq!(quote("\u{1}"), "\"\\x01\"");
}

#[test]
fn vacation_helper() {
    let header = b"To: me@ex.org\r\nPrecedence: junk\r\n\r\n";
    assert!(vacation_skip_reason(header, "a@b.c", &["me@ex.org".into()]).is_some());
    let header = b"To: Me <me@ex.org>\r\n\r\n";
    assert_eq!(vacation_skip_reason(header, "a@b.c", &["me@ex.org".into()]), None);
    assert!(vacation_skip_reason(header, "me@ex.org", &["me@ex.org".into()]).is_some());
}
