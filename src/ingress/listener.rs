//! What a listener makes of its sessions (`[[listener]]`, or an address of
//! `server.listen`): the SMTP machine's parameters (STARTTLS offered or
//! not), implicit TLS before the greeting (RFC 8314), AUTH offered and, on
//! a submission listener, required before MAIL (RFC 6409 §4.3), who may
//! relay, and the AUTH checks themselves with their log lines.
//!
//! Place in the pipeline: built once per listener by `crate::shard` when it
//! starts its accept loops; consulted by the session driver
//! (`crate::ingress`) at the greeting, at AUTH, at MAIL and at RCPT.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::config::{Config, Listener, ListenerRole, ListenerTls};
use crate::log;
use crate::shard::Shard;
use crate::smtp::address::ReversePath;
use crate::smtp::reply::{Enhanced, Reply};
use crate::smtp::server::{Credentials, Server, ServerParams};
use crate::tls::Stream;

/// One listener's settings, shared by its sessions.
pub struct Listening {
    pub listener: Listener,
    /// The shard's parameters last seen, and this listener's version of
    /// them (STARTTLS offered only with `tls = "starttls"`), made again
    /// when a reload replaces the shard's.
    params: std::cell::RefCell<(Arc<ServerParams>, Arc<ServerParams>)>,
}

impl Listening {
    pub fn new(listener: Listener, base: Arc<ServerParams>) -> Listening {
        let own = Self::own_params(&listener, &base);
        Listening { listener, params: std::cell::RefCell::new((base, own)) }
    }

    fn own_params(listener: &Listener, base: &Arc<ServerParams>) -> Arc<ServerParams> {
        let starttls = base.starttls && listener.tls == ListenerTls::StartTls;
        if starttls == base.starttls {
            return base.clone();
        }
        Arc::new(ServerParams { starttls, ..(**base).clone() })
    }

    /// The machine's parameters for a session starting now on this
    /// listener: the shard's (which a reload replaces), adjusted for the
    /// listener's TLS mode.
    pub fn params(&self, shard: &Shard) -> Arc<ServerParams> {
        let base = shard.server_params();
        let mut params = self.params.borrow_mut();
        if !Arc::ptr_eq(&params.0, &base) {
            *params = (base.clone(), Self::own_params(&self.listener, &base));
        }
        params.1.clone()
    }

    /// An mx listener as `server.listen` makes it, on any address (tests).
    pub fn mx(shard: &Shard) -> std::rc::Rc<Listening> {
        let tls = shard.tls_server().is_some();
        let address = SocketAddr::from(([127, 0, 0, 1], 0));
        std::rc::Rc::new(Listening::new(Listener::mx(address, tls), shard.server_params()))
    }

    /// Every listener of `config`, in the order `crate::shard` binds them.
    pub fn all(config: &Config, base: Arc<ServerParams>) -> Vec<Listening> {
        config.all_listeners().into_iter().map(|l| Listening::new(l, base.clone())).collect()
    }

    /// Sets up a new session's machine: AUTH offered where the listener
    /// offers it and `[auth]` is configured.
    pub fn prepare(&self, machine: &mut Server) {
        if let Some(sasl) = crate::sasl::current().filter(|_| self.listener.auth) {
            machine.offer_auth(self.listener.role == ListenerRole::Submission, false);
            if sasl.offers_scram() {
                machine.offer_scram();
            }
        } else if self.listener.role == ListenerRole::Submission {
            // Without a back end no one can authenticate, so no one may send.
            machine.offer_auth(true, false);
        }
    }

    /// Implicit TLS: the handshake before anything is written; Err(reason)
    /// closes the connection.
    pub async fn start_tls(
        &self,
        shard: &Shard,
        stream: &mut Stream,
        machine: &mut Server,
        peer: SocketAddr,
    ) -> Result<(), &'static str> {
        if self.listener.tls != ListenerTls::Implicit {
            return Ok(());
        }
        let Some(config) = shard.tls_server() else {
            return Err("tls_not_configured");
        };
        match stream.accept(config).await {
            Ok(()) => {
                let tls = stream.describe().unwrap_or_default();
                log::event("tls", &[("client", &peer), ("tls", &tls), ("implicit", &true)]);
                machine.tls_from_start();
                Ok(())
            }
            Err(e) => {
                log::event("tls_failed", &[("client", &peer), ("error", &e)]);
                Err("tls_failed")
            }
        }
    }

    /// Whether the client may relay: authenticated, or in the listener's
    /// relay networks (`relay.networks` unless the listener names its own).
    pub fn relay_allowed(&self, config: &Config, ip: IpAddr, authenticated: Option<&str>) -> bool {
        if authenticated.is_some() {
            return true;
        }
        match &self.listener.relay_networks {
            Some(networks) => networks.iter().any(|n| n.contains(ip)),
            None => config.relay.allows_client(ip),
        }
    }
}

/// The reply to a completed SASL exchange, and whether it was a failure
/// (counted against the session). Logged as `event=auth` with the user and
/// the result, never the password.
pub async fn check_auth(
    shard: &Shard,
    peer: SocketAddr,
    mechanism: &'static str,
    credentials: Credentials,
    tls: bool,
    session_failures: u32,
) -> (Reply, bool) {
    let config = shard.config();
    let hostname = &config.server.hostname;
    let outcome = match crate::sasl::current() {
        None => crate::sasl::Outcome::Temporary,
        Some(sasl) => {
            let client = peer.ip().to_string();
            let request = crate::sasl::Request {
                client: &client,
                secured: tls,
                authzid: &credentials.authzid,
                user: &credentials.user,
                password: &credentials.password.0,
            };
            sasl.check(&request, peer.ip(), session_failures).await
        }
    };
    // RFC 4616 §2: an authorization identity other than the login would
    // act for someone else; no back end here grants that.
    let outcome = match outcome {
        crate::sasl::Outcome::Valid(login)
            if !credentials.authzid.is_empty() && !credentials.authzid.eq_ignore_ascii_case(&login) =>
        {
            log::event("auth", &[("client", &peer), ("user", &credentials.user), ("result", &"authzid_refused")]);
            return (Reply::new(535, Enhanced(5, 7, 8), "Authentication credentials invalid"), true);
        }
        other => other,
    };
    let result = match &outcome {
        crate::sasl::Outcome::Valid(_) => "ok",
        crate::sasl::Outcome::Invalid => "invalid",
        crate::sasl::Outcome::Blocked => "blocked",
        crate::sasl::Outcome::Temporary => "temporary",
    };
    log::event(
        "auth",
        &[("client", &peer), ("mechanism", &mechanism), ("user", &credentials.user), ("result", &result)],
    );
    let failed = matches!(outcome, crate::sasl::Outcome::Invalid | crate::sasl::Outcome::Blocked);
    (crate::sasl::reply(&outcome, hostname), failed)
}

/// 553 5.7.1 for an authenticated client whose MAIL FROM is an address the
/// sender login map does not give its login (`auth.sender_login_maps`).
/// The null sender passes.
pub fn sender_login_refusal(machine: &Server, sender: &ReversePath, peer: SocketAddr) -> Option<Reply> {
    let login = machine.authenticated()?;
    let ReversePath::Path(address) = sender else { return None };
    let sasl = crate::sasl::current()?;
    let sender_text = address.to_string();
    match sasl.sender_allowed(login, &sender_text) {
        Ok(true) => None,
        Ok(false) => {
            log::event("sender_login_mismatch", &[("client", &peer), ("user", &login), ("from", &sender_text)]);
            Some(Reply::new(553, Enhanced(5, 7, 1), format!("Sender address {sender_text} not owned by user {login}")))
        }
        Err(e) => {
            log::event("auth_backend_error", &[("client", &peer), ("error", &e)]);
            Some(Reply::new(451, Enhanced(4, 3, 0), "Temporary sender login lookup failure"))
        }
    }
}

/// A SCRAM-SHA-256 exchange of a session, between its steps.
pub struct ScramSession {
    exchange: crate::sasl::scram::Exchange,
    /// The client's proof was right and the server's final message sent:
    /// the client's empty answer gets 235.
    proved: bool,
}

/// The reply to one SCRAM message, the login to set before a 235, and
/// whether the message was a failed attempt (counted against the session).
pub async fn scram_step(
    shard: &Shard,
    peer: SocketAddr,
    state: &mut Option<Box<ScramSession>>,
    first: bool,
    data: Vec<u8>,
    session_failures: u32,
) -> (Reply, Option<String>, bool) {
    use crate::sasl::scram::{server_nonce, ClientFirst, Exchange};
    use base64::Engine as _;
    let config = shard.config();
    let hostname = &config.server.hostname;
    let malformed = || Reply::new(501, Enhanced(5, 5, 2), "Malformed SCRAM message");
    let Some(sasl) = crate::sasl::current().filter(|s| s.offers_scram()) else {
        *state = None;
        return (crate::sasl::reply(&crate::sasl::Outcome::Temporary, hostname), None, false);
    };
    if first {
        *state = None;
        let Some(client_first) = ClientFirst::parse(&data) else { return (malformed(), None, false) };
        if !sasl.client_allowed(peer.ip(), crate::limits::now_ms()) {
            log::event(
                "auth",
                &[
                    ("client", &peer),
                    ("mechanism", &"SCRAM-SHA-256"),
                    ("user", &client_first.user),
                    ("result", &"blocked"),
                ],
            );
            return (crate::sasl::reply(&crate::sasl::Outcome::Blocked, hostname), None, true);
        }
        let Ok(secrets) = sasl.scram_secrets(&client_first.user, peer.ip()).await else {
            return (crate::sasl::reply(&crate::sasl::Outcome::Temporary, hostname), None, false);
        };
        let (exchange, server_first) = Exchange::start(client_first, secrets, &server_nonce());
        *state = Some(Box::new(ScramSession { exchange, proved: false }));
        let challenge = base64::engine::general_purpose::STANDARD.encode(server_first);
        return (Reply { code: 334, enhanced: None, lines: vec![challenge] }, None, false);
    }
    let Some(session) = state.take() else { return (malformed(), None, false) };
    let user = session.exchange.user.clone();
    if session.proved {
        if !data.is_empty() {
            return (malformed(), None, false);
        }
        log::event("auth", &[("client", &peer), ("mechanism", &"SCRAM-SHA-256"), ("user", &user), ("result", &"ok")]);
        return (crate::sasl::reply(&crate::sasl::Outcome::Valid(user.clone()), hostname), Some(user), false);
    }
    match session.exchange.finish(&data) {
        Some(server_final) => {
            *state = Some(Box::new(ScramSession { proved: true, ..*session }));
            let challenge = base64::engine::general_purpose::STANDARD.encode(server_final);
            (Reply { code: 334, enhanced: None, lines: vec![challenge] }, None, false)
        }
        None => {
            let outcome = sasl.failed(peer.ip(), session_failures).await;
            let result = if outcome == crate::sasl::Outcome::Blocked { "blocked" } else { "invalid" };
            log::event(
                "auth",
                &[("client", &peer), ("mechanism", &"SCRAM-SHA-256"), ("user", &user), ("result", &result)],
            );
            (crate::sasl::reply(&outcome, hostname), None, true)
        }
    }
}
