//! Reads `[[listener]]` and `[auth]` (types in `config/submission.rs`).
//!
//! Place in the pipeline: called by `read_config` once the rest of the
//! file is read, so that a listener can be checked against `tls.cert` and
//! `[auth]`.

use super::{
    array, boolean, cidr, duration, duration_nonzero, ensure, invalid, path, positive, socket_addr, string, tables_of,
    Node, Result, Section,
};
use crate::config::submission::{Listener, ListenerRole, ListenerTls, Sasl, SaslBackend};
use crate::config::Duration;

pub(in crate::config) const LISTENER_KEYS: &[&str] = &["address", "role", "tls", "relay_networks", "frontline", "auth"];
pub(in crate::config) const AUTH_KEYS: &[&str] = &[
    "backend",
    "table",
    "dovecot_socket",
    "ldap",
    "ldap_bind_dn",
    "max_failures",
    "max_failures_per_client",
    "failure_window",
    "failure_delay",
    "max_concurrent",
    "queue_max",
    "timeout",
    "sender_login_maps",
];
/// Most `[[listener]]` tables.
const LISTENERS_MAX: usize = 64;
/// Most failures a limit may allow.
const FAILURES_MAX: u32 = 1000;
/// Longest wait before a 535.
const FAILURE_DELAY_MAX: std::time::Duration = std::time::Duration::from_secs(30);

/// `[[listener]]`: `tls_configured` is whether `tls.cert` and `tls.key` are set.
pub(super) fn read_listeners(node: &Node, tls_configured: bool, auth: bool) -> Result<Vec<Listener>> {
    let mut listeners: Vec<Listener> = Vec::new();
    for (element, table, prefix) in tables_of(node, "listener", LISTENER_KEYS, LISTENERS_MAX)? {
        let get = |key: &str| table.get(key).map(|entry| (&entry.node, format!("{prefix}.{key}")));
        let (node, key) = get("address").ok_or_else(|| invalid(element, &prefix, "a listener needs address"))?;
        let address = socket_addr(node, &key)?;
        ensure(!listeners.iter().any(|l| l.address == address), node, &key, "this address is listed above")?;
        let role = match get("role") {
            None => ListenerRole::Mx,
            Some((node, key)) => string(node, &key)?.parse().map_err(|reason: String| invalid(node, &key, reason))?,
        };
        let mut listener = Listener::mx(address, tls_configured);
        listener.role = role;
        listener.frontline = role == ListenerRole::Mx;
        listener.auth = role == ListenerRole::Submission;
        if let Some((node, key)) = get("tls") {
            listener.tls = string(node, &key)?.parse().map_err(|reason: String| invalid(node, &key, reason))?;
            ensure(listener.tls == ListenerTls::None || tls_configured, node, &key, "needs tls.cert and tls.key")?;
        }
        if let Some((node, key)) = get("relay_networks") {
            listener.relay_networks = Some(array(node, &key, cidr)?);
        } else if role == ListenerRole::Submission {
            listener.relay_networks = Some(Vec::new());
        }
        if let Some((node, key)) = get("frontline") {
            listener.frontline = boolean(node, &key)?;
        }
        if let Some((node, key)) = get("auth") {
            listener.auth = boolean(node, &key)?;
        }
        ensure(!listener.auth || auth, element, &prefix, "offers AUTH, which needs an [auth] table")?;
        listeners.push(listener);
    }
    Ok(listeners)
}

/// `[auth]`.
pub(super) fn read_auth(node: &Node, section: &Section<'_>) -> Result<Sasl> {
    let text = |key: &str| section.read(key, None, |node, key| string(node, key).map(Some));
    let backend = text("backend")?.ok_or_else(|| invalid(node, "auth", "needs backend"))?;
    let needed = |key: &str| -> Result<&Node> {
        section.node(key).ok_or_else(|| invalid(node, "auth", format!("backend = {backend:?} needs auth.{key}")))
    };
    let backend = match backend.as_str() {
        "table" => SaslBackend::Table(path(needed("table")?, "auth.table")?),
        "dovecot" => SaslBackend::Dovecot(path(needed("dovecot_socket")?, "auth.dovecot_socket")?),
        "ldap" => {
            let url = string(needed("ldap")?, "auth.ldap")?;
            let url_node = needed("ldap")?;
            ensure(url.starts_with("ldap://"), url_node, "auth.ldap", "an ldap:// URL")?;
            let bind_dn = string(needed("ldap_bind_dn")?, "auth.ldap_bind_dn")?;
            ensure(bind_dn.contains("%u"), needed("ldap_bind_dn")?, "auth.ldap_bind_dn", "must use %u for the user")?;
            SaslBackend::Ldap { url, bind_dn }
        }
        other => {
            let node = section.node("backend").unwrap_or(node);
            return Err(invalid(
                node,
                "auth.backend",
                format!("must be \"table\", \"dovecot\" or \"ldap\", not {other:?}"),
            ));
        }
    };
    let failures = |key: &str, default: u32| {
        section.read(key, default, |node, key| {
            let value: u32 = positive(node, key)?;
            ensure(value <= FAILURES_MAX, node, key, "at most 1000")?;
            Ok(value)
        })
    };
    Ok(Sasl {
        backend,
        max_failures: failures("max_failures", 3)?,
        max_failures_per_client: failures("max_failures_per_client", 10)?,
        failure_window: section.read("failure_window", Duration::from_secs(600), duration_nonzero)?,
        failure_delay: section.read("failure_delay", Duration::from_secs(1), |node, key| {
            let value = duration(node, key)?;
            ensure(value.0 <= FAILURE_DELAY_MAX, node, key, "at most 30s")?;
            Ok(value)
        })?,
        max_concurrent: section.read("max_concurrent", 4, |node, key| {
            let value: usize = positive(node, key)?;
            ensure(value <= crate::pool::MAX_CONNECTIONS_MAX, node, key, "at most 256")?;
            Ok(value)
        })?,
        queue_max: section.read("queue_max", 64, |node, key| {
            let value: usize = positive(node, key)?;
            ensure(value <= crate::pool::QUEUE_MAX_MAX, node, key, "at most 100000")?;
            Ok(value)
        })?,
        timeout: section.read("timeout", Duration::from_secs(10), duration_nonzero)?,
        sender_login_maps: section.read("sender_login_maps", None, |node, key| super::optional(node, key, path))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{load_str, Config};
    use std::path::Path;

    fn load(text: &str) -> std::result::Result<Config, String> {
        load_str(Path::new("t.toml"), text, &[]).map_err(|e| e.to_string())
    }

    const TLS: &str = "[tls]\ncert = \"/c.pem\"\nkey = \"/k.pem\"\n";
    const AUTH: &str = "[auth]\nbackend = \"table\"\ntable = \"/etc/ringpost/passwd\"\n";

    #[test]
    fn listeners_and_auth_load_print_and_default_by_role() {
        let text = format!(
            "{TLS}{AUTH}[[listener]]\naddress = \"127.0.0.1:587\"\nrole = \"submission\"\n\
             [[listener]]\naddress = \"127.0.0.1:465\"\nrole = \"submission\"\ntls = \"implicit\"\n\
             [[listener]]\naddress = \"127.0.0.1:25\"\nrelay_networks = [\"10.0.0.0/8\"]\nfrontline = false\n"
        );
        let config = load(&text).expect("loads");
        assert!(config.server.listen.is_empty(), "listeners replace the default server.listen");
        let [sub, implicit, mx] = &config.listeners[..] else { panic!("three listeners") };
        assert_eq!(
            (sub.role, sub.tls, sub.frontline, sub.auth),
            (ListenerRole::Submission, ListenerTls::StartTls, false, true)
        );
        assert_eq!(sub.relay_networks.as_deref(), Some(&[][..]));
        assert_eq!(implicit.tls, ListenerTls::Implicit);
        assert_eq!((mx.role, mx.frontline, mx.auth), (ListenerRole::Mx, false, false));
        assert_eq!(mx.relay_networks.as_ref().map(Vec::len), Some(1));
        let sasl = config.sasl.as_ref().expect("[auth]");
        assert_eq!((sasl.max_failures, sasl.max_concurrent), (3, 4));
        assert_eq!(sasl.backend, SaslBackend::Table("/etc/ringpost/passwd".into()));
        let printed = config.to_toml();
        assert_eq!(load(&printed).expect("printed loads"), config, "{printed}");
        assert_eq!(config.all_listeners().len(), 3);
        // server.listen given as well: both, as mx and as listed.
        let both = load(&format!("[server]\nlisten = [\"127.0.0.1:2525\"]\n{text}")).expect("loads");
        assert_eq!(both.all_listeners().len(), 4);
    }

    #[test]
    fn bad_listeners_and_auth_are_refused() {
        let sub = "[[listener]]\naddress = \"127.0.0.1:587\"\nrole = \"submission\"\n";
        assert!(load(&format!("{TLS}{sub}")).unwrap_err().contains("[auth]"), "submission needs [auth]");
        assert!(load(&format!("{AUTH}[[listener]]\naddress = \"127.0.0.1:465\"\ntls = \"implicit\"\n"))
            .unwrap_err()
            .contains("tls.cert"));
        assert!(load("[[listener]]\naddress = \"127.0.0.1:25\"\nrole = \"relay\"\n").is_err());
        assert!(load("[[listener]]\nrole = \"mx\"\n").unwrap_err().contains("address"));
        let twice = "[[listener]]\naddress = \"127.0.0.1:25\"\n[[listener]]\naddress = \"127.0.0.1:25\"\n";
        assert!(load(twice).is_err());
        assert!(load("[auth]\nbackend = \"table\"\n").unwrap_err().contains("auth.table"));
        assert!(load("[auth]\nbackend = \"pam\"\n").is_err());
        assert!(load("[auth]\nbackend = \"ldap\"\nldap = \"ldap://h\"\nldap_bind_dn = \"uid=x\"\n")
            .unwrap_err()
            .contains("%u"));
        assert!(load(&format!("{AUTH}max_failures = 0\n")).is_err());
        assert!(load("[server]\nlisten = []\n").is_err(), "nothing to listen on");
    }

    #[test]
    fn docs_list_every_listener_and_auth_key() {
        let docs = include_str!("../../../docs/config.md");
        for (table, keys) in [("[[listener]]", LISTENER_KEYS), ("[auth]", AUTH_KEYS)] {
            let section = docs.split(&format!("## `{table}`")).nth(1).expect("table documented");
            let section = section.split("\n## ").next().unwrap_or(section);
            for key in keys {
                assert!(section.contains(&format!("| `{key}` |")), "{table} {key} documented");
            }
        }
    }
}
