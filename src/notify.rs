//! Readiness for a service manager: `READY=1` as one datagram to the Unix
//! socket named in `$NOTIFY_SOCKET` (systemd's `Type=notify`), a path or,
//! with a leading `@`, an abstract name. Without the variable nothing is
//! sent.
//!
//! Place in the pipeline: `crate::shard::run` sends it once every shard
//! has opened its queue and runs its accept loops, so `systemctl start`
//! returns when ringpost takes mail.

use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Sends `state` (such as `READY=1`) to `$NOTIFY_SOCKET`, if set.
pub fn notify(state: &str) -> std::io::Result<()> {
    match std::env::var_os("NOTIFY_SOCKET") {
        Some(socket) => send(&socket.to_string_lossy(), state),
        None => Ok(()),
    }
}

/// Sends `state` to the socket `name` (a path, or `@` and an abstract name).
pub fn send(name: &str, state: &str) -> std::io::Result<()> {
    let address = match name.strip_prefix('@') {
        Some(abstract_name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(abstract_name.as_bytes())?
        }
        None => SocketAddr::from_pathname(name)?,
    };
    let socket = UnixDatagram::unbound()?;
    socket.send_to_addr(state.as_bytes(), &address)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_reaches_a_path_socket() {
        let dir = crate::testing::tempdir("notify");
        let path = dir.join("notify.sock");
        let listener = UnixDatagram::bind(&path).expect("bind");
        send(&path.to_string_lossy(), "READY=1").expect("send");
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"READY=1");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn ready_reaches_an_abstract_socket() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("ringpost-notify-test-{}", std::process::id());
        let listener =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).expect("name")).expect("bind");
        send(&format!("@{name}"), "READY=1").expect("send");
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"READY=1");
    }

    #[test]
    fn nothing_listening_is_an_error() {
        assert!(send("/nonexistent/ringpost/notify.sock", "READY=1").is_err());
    }
}
