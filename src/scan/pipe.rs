//! A program as a content scanner: the message on its standard input, run
//! without a shell as a configured user and group (default `nobody` when
//! ringpost runs as root, the security boundary between scanner and MTA;
//! ringpost's own user after a drop to `server.user`), its exit status the
//! verdict.
//!
//! Place in the pipeline: one scanner kind of the scanning stage at the
//! final dot (`crate::scan::scanners`). The program runs on the blocking
//! pool, never on the shard's executor, through the same runner as pipe
//! delivery (`deliver::pipe::run_program`: empty environment but `PATH`,
//! its own process group, killed at the time limit).
//!
//! - argv: each element expanded — `{sender}` (`""` for `<>`),
//!   `{client_ip}`, `{queue_id}`, and `{recipients}`: an element that is
//!   exactly `{recipients}` becomes one argument per recipient; inside a
//!   longer element the recipients are joined with commas.
//! - stdin: the message as stored, with LF line ends (a BINARYMIME message
//!   byte for byte).
//! - exit status: 0 accept, and each stdout line of the form `X-Name: value`
//!   is a header line to add; 1 reject, the first line of stdout the
//!   reason; 75 (EX_TEMPFAIL) and any other status, or a signal, try again
//!   later.

use std::process::ChildStdin;
use std::time::Duration;

use crate::deliver::pipe::{run_program, write_message, LineEnds, PipeParams, Ran};
use crate::scan::content::{Message, Verdict};

/// Added header lines taken from one program's output.
const HEADER_LINES_MAX: usize = 20;
/// Longest added header line, and longest reason.
const LINE_BYTES_MAX: usize = 998;

/// A pipe scanner, resolved from its `[[scanner]]` table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PipeScanParams {
    pub argv: Vec<String>,
    pub uid: u32,
    pub gid: u32,
    pub timeout: Duration,
}

impl PipeScanParams {
    /// `user` and `group` as for pipe delivery: names or numbers, `nobody`
    /// and its group when unset.
    pub fn new(command: &[String], user: Option<&str>, group: Option<&str>, timeout: Duration) -> Result<Self, String> {
        let PipeParams { argv, uid, gid, timeout } = PipeParams::from_rule(command, user, group, timeout)?;
        Ok(PipeScanParams { argv, uid, gid, timeout })
    }
}

/// The program's arguments for `message`.
pub fn expand(argv: &[String], message: &Message<'_>) -> Vec<String> {
    let env = message.env;
    let sender = match &env.sender {
        crate::smtp::address::ReversePath::Null => String::new(),
        crate::smtp::address::ReversePath::Path(address) => address.to_string(),
    };
    let recipients: Vec<String> = env.recipients.iter().map(|r| r.address.to_string()).collect();
    let mut out = Vec::with_capacity(argv.len() + recipients.len());
    for (index, arg) in argv.iter().enumerate() {
        if index > 0 && arg == "{recipients}" {
            out.extend(recipients.iter().cloned());
            continue;
        }
        out.push(
            arg.replace("{sender}", &sender)
                .replace("{client_ip}", &env.client)
                .replace("{queue_id}", &env.id)
                .replace("{recipients}", &recipients.join(",")),
        );
    }
    out
}

/// Runs the program over `message`. `Err` when it cannot be started.
pub async fn scan(params: &PipeScanParams, message: Message<'_>) -> Result<Verdict, String> {
    let argv = expand(&params.argv, &message);
    let program = argv[0].clone();
    let body = message.env.body.clone();
    let stored = message.stored.clone();
    let line_ends = if message.env.body_binary { LineEnds::AsStored } else { LineEnds::Lf };
    let (uid, gid, timeout) = (params.uid, params.gid, params.timeout);
    let vars = [("QUEUE_ID", message.env.id.clone())];
    let ran = glommio::executor()
        .spawn_blocking(move || {
            let feed = move |stdin: &mut ChildStdin| {
                // A program may decide before it has read everything.
                match write_message(stdin, b"", &body, &stored, line_ends) {
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
                    other => other,
                }
            };
            run_program(&argv, &vars, uid, gid, timeout, feed)
        })
        .await
        .map_err(|e| format!("pipe scanner {program}: {e}"))?;
    Ok(verdict(&program, &ran))
}

/// The verdict of a program that ran.
fn verdict(program: &str, ran: &Ran) -> Verdict {
    let first_line = || {
        let line = ran.stdout.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("");
        bounded(line)
    };
    match ran.status.map(|s| s.code()) {
        None => Verdict::Tempfail { reason: format!("{program} killed at its time limit") },
        Some(None) => Verdict::Tempfail { reason: format!("{program} killed by a signal") },
        Some(Some(0)) => {
            let headers = ran
                .stdout
                .lines()
                .filter(|line| is_header(line))
                .take(HEADER_LINES_MAX)
                .map(|line| line.to_string())
                .collect();
            Verdict::Accept { headers, score: None }
        }
        Some(Some(1)) => {
            let reason = first_line();
            Verdict::Reject {
                reason: if reason.is_empty() { format!("refused by {program}") } else { reason },
                score: None,
            }
        }
        Some(Some(code)) => {
            let reason = first_line();
            let reason = if reason.is_empty() { format!("{program} exited with {code}") } else { reason };
            Verdict::Tempfail { reason }
        }
    }
}

/// `X-Name: value`: printable ASCII, a name of letters, digits and `-`.
fn is_header(line: &str) -> bool {
    let Some((name, value)) = line.split_once(':') else { return false };
    name.len() > 2
        && name[..2].eq_ignore_ascii_case("x-")
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && line.len() <= LINE_BYTES_MAX
        && value.bytes().all(|b| (0x20..0x7f).contains(&b) || b == b'\t')
}

fn bounded(line: &str) -> String {
    line.chars().filter(|c| !c.is_control()).take(LINE_BYTES_MAX).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;
    use crate::queue::StoredBody;

    fn ran(code: i32, stdout: &str) -> Ran {
        Ran {
            status: Some(std::process::ExitStatus::from_raw(code << 8)),
            stdout: stdout.into(),
            stderr: String::new(),
        }
    }

    #[test]
    fn exit_codes_and_output_become_verdicts() {
        assert_eq!(
            verdict("/x", &ran(0, "X-Filter: checked\nnot a header\nX-Bad Name: x\nSubject: no\nX-Score: 1\n")),
            Verdict::Accept { headers: vec!["X-Filter: checked".into(), "X-Score: 1".into()], score: None }
        );
        assert_eq!(
            verdict("/x", &ran(1, "\n  Looks like phishing\nmore\n")),
            Verdict::Reject { reason: "Looks like phishing".into(), score: None }
        );
        assert_eq!(verdict("/x", &ran(1, "")), Verdict::Reject { reason: "refused by /x".into(), score: None });
        assert_eq!(verdict("/x", &ran(75, "busy")), Verdict::Tempfail { reason: "busy".into() });
        assert_eq!(verdict("/x", &ran(2, "")), Verdict::Tempfail { reason: "/x exited with 2".into() });
        let killed = Ran { status: None, stdout: String::new(), stderr: String::new() };
        assert!(matches!(verdict("/x", &killed), Verdict::Tempfail { .. }));
        let signalled = Ran { status: Some(std::process::ExitStatus::from_raw(9)), ..ran(0, "") };
        assert!(matches!(verdict("/x", &signalled), Verdict::Tempfail { .. }));
    }

    #[test]
    fn arguments_are_expanded_from_the_envelope() {
        let env = crate::testing::envelope("0000000000000001", &["a@x.test", "b@x.test"], 0);
        let message = Message { env: &env, stored: &StoredBody::default() };
        let argv: Vec<String> =
            ["/bin/f", "--from={sender}", "{recipients}", "--to={recipients}", "{client_ip}", "{queue_id}"]
                .iter()
                .map(|s| s.to_string())
                .collect();
        assert_eq!(
            expand(&argv, &message),
            vec![
                "/bin/f",
                "--from=sender@example.org",
                "a@x.test",
                "b@x.test",
                "--to=a@x.test,b@x.test",
                "127.0.0.1",
                "0000000000000001"
            ]
        );
    }
}
