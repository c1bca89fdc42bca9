//! The SMTP AUTH part of the server machine (RFC 4954): the `AUTH`
//! command, the SASL exchange as a sub-state of its own (`Mode::Auth`),
//! the PLAIN (RFC 4616) and LOGIN mechanisms decoded into one
//! [`Credentials`], the `530 5.7.0` before MAIL on a listener that requires
//! AUTH, and the `AUTH=` parameter of MAIL FROM (RFC 4954 §5). Whether the
//! password is right is the driver's question (`Event::Auth`, answered by
//! `decide()` with 235, 535, 454 or 421).
//!
//! PLAIN and LOGIN send the password in the clear, so they are offered in
//! EHLO and accepted only once TLS is active (`538 5.7.11` before), unless
//! the listener allows them without TLS. The state lives in one box that
//! only sessions of listeners offering AUTH allocate.

use base64::Engine as _;

use super::{Enhanced, Event, Flow, Mode, ParamError, Pending, Reply, Server};

/// Longest line of the SASL exchange, CRLF included (RFC 4954 §4 allows
/// 12288 octets; PLAIN with the longest credentials fits well within this).
const AUTH_LINE_BYTES_MAX: usize = 4096;
/// Longest decoded user name, authorization identity or password.
const CREDENTIAL_BYTES_MAX: usize = crate::sasl::CREDENTIAL_BYTES_MAX;

/// A password; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(pub String);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(..)")
    }
}

/// What a SASL exchange decoded: PLAIN's three strings, or LOGIN's two
/// (with an empty authorization identity).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Credentials {
    pub authzid: String,
    pub user: String,
    pub password: Password,
}

/// Where a SASL exchange stands.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Step {
    Idle,
    /// `334 ` sent; waiting for PLAIN's response.
    PlainResponse,
    /// `334 VXNlcm5hbWU6` sent; waiting for the user name.
    LoginUser,
    /// `334 UGFzc3dvcmQ6` sent; waiting for the password.
    LoginPassword {
        user: String,
    },
    /// SCRAM-SHA-256: waiting for the client's first message, or for a
    /// later one (after the driver's 334).
    Scram {
        first: bool,
    },
}

/// AUTH state of a session whose listener offers it.
#[derive(Debug)]
pub(super) struct SaslState {
    /// MAIL needs AUTH first (a submission listener).
    required: bool,
    /// PLAIN and LOGIN are offered without TLS.
    cleartext: bool,
    /// The login the session authenticated as.
    user: Option<Box<str>>,
    step: Step,
    /// SCRAM-SHA-256 is offered too (the driver runs its exchange).
    scram: bool,
    /// The login a SCRAM exchange is for, set by the driver before its 235.
    pending_login: Option<Box<str>>,
}

impl Server {
    /// Offer AUTH PLAIN and LOGIN (after TLS, or also before with
    /// `cleartext`); with `required`, MAIL before a successful AUTH gets
    /// 530 5.7.0. Called before the first poll.
    pub fn offer_auth(&mut self, required: bool, cleartext: bool) {
        self.sasl = Some(Box::new(SaslState {
            required,
            cleartext,
            user: None,
            step: Step::Idle,
            scram: false,
            pending_login: None,
        }));
    }

    /// Offer SCRAM-SHA-256 as well (after [`Server::offer_auth`]): its
    /// messages come out as `Event::AuthStep` for the driver to answer.
    pub fn offer_scram(&mut self) {
        if let Some(sasl) = self.sasl.as_mut() {
            sasl.scram = true;
        }
    }

    /// The login the SCRAM exchange in progress proves, before the driver
    /// answers its last step with 235.
    pub fn set_auth_login(&mut self, login: &str) {
        if let Some(sasl) = self.sasl.as_mut() {
            sasl.pending_login = Some(login.into());
        }
    }

    /// TLS was active from the start (implicit TLS, RFC 8314): STARTTLS is
    /// not offered and AUTH may be. Called before the first poll.
    pub fn tls_from_start(&mut self) {
        self.tls_active = true;
    }

    /// The login the session authenticated as.
    pub fn authenticated(&self) -> Option<&str> {
        self.sasl.as_ref().and_then(|s| s.user.as_deref())
    }

    /// The EHLO keyword, when AUTH is offered now.
    pub(super) fn auth_keyword(&self) -> Option<String> {
        let sasl = self.sasl.as_ref()?;
        let mechanisms = if sasl.scram { "AUTH PLAIN LOGIN SCRAM-SHA-256" } else { "AUTH PLAIN LOGIN" };
        (self.tls_active || sasl.cleartext).then(|| mechanisms.to_string())
    }

    /// RFC 3207 §4.2: after the TLS handshake nothing from before counts.
    pub(super) fn auth_reset(&mut self) {
        if let Some(sasl) = self.sasl.as_mut() {
            sasl.user = None;
            sasl.pending_login = None;
            sasl.step = Step::Idle;
        }
    }

    /// The protocol name with RFC 3848's `A` once authenticated.
    pub(super) fn with_auth(&self, protocol: &'static str) -> &'static str {
        if self.authenticated().is_none() {
            return protocol;
        }
        match protocol {
            "ESMTP" => "ESMTPA",
            "ESMTPS" => "ESMTPSA",
            "UTF8SMTP" => "UTF8SMTPA",
            "UTF8SMTPS" => "UTF8SMTPSA",
            other => other,
        }
    }

    /// Heap octets of the AUTH state.
    pub(super) fn auth_heap_bytes(&self) -> usize {
        self.sasl.as_ref().map_or(0, |s| {
            let step = match &s.step {
                Step::LoginPassword { user } => user.capacity(),
                _ => 0,
            };
            std::mem::size_of::<SaslState>()
                + s.user.as_ref().map_or(0, |u| u.len())
                + s.pending_login.as_ref().map_or(0, |u| u.len())
                + step
        })
    }

    /// 530 5.7.0 for MAIL on a listener that requires AUTH, before it.
    pub(super) fn auth_required_refusal(&mut self) -> bool {
        let required = self.sasl.as_ref().is_some_and(|s| s.required && s.user.is_none());
        if required {
            self.client_error(530, Enhanced(5, 7, 0), "Authentication required");
        }
        required
    }

    /// MAIL parameters without `AUTH=` (RFC 4954 §5), which is checked
    /// here: an xtext mailbox or `<>`. The value is not kept: an
    /// authenticated session's identity is its login, and an
    /// unauthenticated one's AUTH= counts as `<>`. Without AUTH offered,
    /// the parameter is left for the parser to refuse.
    pub(super) fn without_auth_param(&self, params: &str) -> Result<String, ParamError> {
        if self.sasl.is_none() {
            return Ok(params.to_string());
        }
        let mut kept = Vec::new();
        let mut seen = false;
        for item in params.split(' ').filter(|x| !x.is_empty()) {
            let Some((key, value)) = item.split_once('=') else {
                kept.push(item);
                continue;
            };
            if !key.eq_ignore_ascii_case("AUTH") {
                kept.push(item);
                continue;
            }
            if seen {
                return Err(ParamError::Syntax("parameter given twice"));
            }
            seen = true;
            if value != "<>" && !valid_xtext(value) {
                return Err(ParamError::Syntax("bad AUTH value (xtext or <>)"));
            }
        }
        Ok(kept.join(" "))
    }

    pub(super) fn cmd_auth(&mut self, args: &str) {
        let Some(sasl) = self.sasl.as_ref() else {
            return self.client_error(502, Enhanced(5, 5, 1), "AUTH not available");
        };
        let (authenticated, cleartext, scram) = (sasl.user.is_some(), sasl.cleartext, sasl.scram);
        if !self.helo.as_ref().is_some_and(|h| h.esmtp) {
            return self.client_error(503, Enhanced(5, 5, 1), "send EHLO first");
        }
        if authenticated {
            return self.client_error(503, Enhanced(5, 5, 1), "already authenticated");
        }
        if self.txn.is_some() || self.content.is_some() {
            return self.client_error(503, Enhanced(5, 5, 1), "AUTH not allowed during a mail transaction");
        }
        let mut words = args.split(' ').filter(|w| !w.is_empty());
        let (Some(mechanism), initial, None) = (words.next(), words.next(), words.next()) else {
            return self.client_error(501, Enhanced(5, 5, 4), "syntax: AUTH mechanism [initial-response]");
        };
        let mechanism = mechanism.to_ascii_uppercase();
        let known = mechanism == "PLAIN" || mechanism == "LOGIN" || (scram && mechanism == "SCRAM-SHA-256");
        if !known {
            return self.client_error(504, Enhanced(5, 5, 4), "Unrecognized authentication type");
        }
        if !self.tls_active && !cleartext {
            return self.client_error(
                538,
                Enhanced(5, 7, 11),
                "Encryption required for requested authentication mechanism",
            );
        }
        match (mechanism.as_str(), initial) {
            ("PLAIN", None) => self.challenge(Step::PlainResponse, ""),
            ("PLAIN", Some(response)) => self.plain_response(response),
            // RFC 4954 §4's initial response, as some clients send LOGIN's
            // user name.
            ("LOGIN", Some(response)) => self.login_user(response),
            ("LOGIN", None) => self.challenge(Step::LoginUser, "VXNlcm5hbWU6"),
            (_, None) => self.challenge(Step::Scram { first: true }, ""),
            (_, Some(response)) => self.scram_message(response, true),
        }
    }

    /// A `334` challenge, and the exchange waits for the client's line.
    fn challenge(&mut self, step: Step, text: &str) {
        if let Some(sasl) = self.sasl.as_mut() {
            sasl.step = step;
        }
        self.output.extend_from_slice(format!("334 {text}\r\n").as_bytes());
        self.mode = Mode::Auth;
    }

    /// Reads one line of the exchange.
    pub(super) fn step_auth(&mut self) -> Flow {
        let avail = &self.input[self.input_pos..];
        let Some(lf) = avail.iter().position(|&b| b == b'\n') else {
            if avail.len() >= AUTH_LINE_BYTES_MAX {
                self.input_pos = self.input.len();
                self.end_exchange();
                self.mode = Mode::SkipLine;
                self.client_error(500, Enhanced(5, 5, 6), "authentication exchange line too long");
            }
            return Flow::NeedInput;
        };
        let line = avail[..lf].strip_suffix(b"\r").unwrap_or(&avail[..lf]).to_vec();
        self.input_pos += lf + 1;
        self.rearm = true;
        let step = self.sasl.as_mut().map_or(Step::Idle, |s| std::mem::replace(&mut s.step, Step::Idle));
        self.mode = Mode::Command;
        let Ok(text) = std::str::from_utf8(&line) else {
            self.client_error(501, Enhanced(5, 5, 2), "Invalid base64 data");
            return Flow::Continue;
        };
        if text == "*" {
            self.client_error(501, Enhanced(5, 0, 0), "Authentication cancelled");
            return Flow::Continue;
        }
        match step {
            Step::PlainResponse => self.plain_response(text),
            Step::LoginUser => self.login_user(text),
            Step::LoginPassword { user } => match decode_text(text) {
                Some(password) => self.credentials("LOGIN", String::new(), user, password),
                None => self.client_error(501, Enhanced(5, 5, 2), "Invalid base64 data"),
            },
            Step::Scram { first } => self.scram_message(text, first),
            Step::Idle => debug_assert!(false, "Mode::Auth without a step"),
        }
        Flow::Continue
    }

    fn end_exchange(&mut self) {
        if let Some(sasl) = self.sasl.as_mut() {
            sasl.step = Step::Idle;
        }
    }

    /// PLAIN's `authzid NUL authcid NUL passwd` (RFC 4616 §2).
    fn plain_response(&mut self, response: &str) {
        let decoded = match response {
            "=" => Some(Vec::new()),
            _ => base64::engine::general_purpose::STANDARD.decode(response).ok(),
        };
        let Some(decoded) = decoded else {
            return self.client_error(501, Enhanced(5, 5, 2), "Invalid base64 data");
        };
        let mut parts = decoded.split(|&b| b == 0);
        let fields = (parts.next(), parts.next(), parts.next(), parts.next());
        let (Some(authzid), Some(user), Some(password), None) = fields else {
            return self.client_error(501, Enhanced(5, 5, 2), "PLAIN needs authzid NUL user NUL password");
        };
        match (utf8_credential(authzid), utf8_credential(user), utf8_credential(password)) {
            (Some(authzid), Some(user), Some(password)) if !user.is_empty() => {
                self.credentials("PLAIN", authzid, user, password)
            }
            _ => self.client_error(501, Enhanced(5, 5, 2), "PLAIN needs a user name and a password in UTF-8"),
        }
    }

    fn login_user(&mut self, response: &str) {
        match decode_text(response).filter(|user| !user.is_empty()) {
            Some(user) => self.challenge(Step::LoginPassword { user }, "UGFzc3dvcmQ6"),
            None => self.client_error(501, Enhanced(5, 5, 2), "Invalid base64 data"),
        }
    }

    /// The exchange is complete: the driver checks the password.
    fn credentials(&mut self, mechanism: &'static str, authzid: String, user: String, password: String) {
        self.mode = Mode::Command;
        self.pending = Some(Box::new(Pending::Auth { user: user.clone() }));
        self.push_event(Event::Auth {
            mechanism,
            credentials: Credentials { authzid, user, password: Password(password) },
        });
    }

    /// A SCRAM message for the driver.
    fn scram_message(&mut self, response: &str, first: bool) {
        let data = match response {
            "=" => Some(Vec::new()),
            _ => base64::engine::general_purpose::STANDARD.decode(response).ok(),
        };
        let Some(data) = data.filter(|d| d.len() <= CREDENTIAL_BYTES_MAX * 2) else {
            return self.client_error(501, Enhanced(5, 5, 2), "Invalid base64 data");
        };
        self.mode = Mode::Command;
        self.pending = Some(Box::new(Pending::AuthStep));
        self.push_event(Event::AuthStep { mechanism: "SCRAM-SHA-256", first, data });
    }

    /// The driver's answer to `Event::AuthStep`: 334 carries the next
    /// challenge and the exchange goes on; 235 authenticates the session
    /// as the login set by `set_auth_login`; anything else ends it.
    pub(super) fn auth_step_decided(&mut self, reply: &Reply) {
        let Some(sasl) = self.sasl.as_mut() else { return };
        let login = sasl.pending_login.take();
        match reply.code {
            334 => {
                sasl.pending_login = login;
                sasl.step = Step::Scram { first: false };
                self.mode = Mode::Auth;
            }
            235 => {
                debug_assert!(login.is_some(), "set_auth_login() before 235");
                sasl.user = login;
            }
            _ => {}
        }
    }

    /// The driver's answer to `Event::Auth`: 235 authenticates the session.
    pub(super) fn auth_decided(&mut self, user: String, reply: &Reply) {
        if reply.code == 235 {
            if let Some(sasl) = self.sasl.as_mut() {
                sasl.user = Some(user.into());
            }
        }
    }
}

/// A base64 line decoded to a UTF-8 credential (`=` is empty).
fn decode_text(line: &str) -> Option<String> {
    if line == "=" {
        return Some(String::new());
    }
    let bytes = base64::engine::general_purpose::STANDARD.decode(line).ok()?;
    utf8_credential(&bytes)
}

/// UTF-8, without NUL or line ends, at most `CREDENTIAL_BYTES_MAX`.
fn utf8_credential(bytes: &[u8]) -> Option<String> {
    if bytes.len() > CREDENTIAL_BYTES_MAX || bytes.iter().any(|&b| b == 0 || b == b'\r' || b == b'\n') {
        return None;
    }
    String::from_utf8(bytes.to_vec()).ok()
}

/// RFC 3461 §4 xtext: printable ASCII but `+` and `=`, and `+HH`.
fn valid_xtext(text: &str) -> bool {
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                let hex = bytes.get(i + 1..i + 3);
                if !hex.is_some_and(|h| h.iter().all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(b))) {
                    return false;
                }
                i += 3;
            }
            b'!'..=b'~' if bytes[i] != b'=' => i += 1,
            _ => return false,
        }
    }
    !text.is_empty()
}
