//! systemd's service notification protocol (`sd_notify(3)`, for
//! `Type=notify`): state lines sent as one datagram to the unix socket named
//! by `$NOTIFY_SOCKET` (a path, or `@name` in the abstract namespace). No
//! `$NOTIFY_SOCKET`: nothing is sent. Failures are ignored — a lost
//! notification must not stop the server.

use std::os::unix::net::{SocketAddr, UnixDatagram};

/// Send `state` (e.g. `"READY=1\nSTATUS=..."`) to the service manager.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let path = path.to_string_lossy().into_owned();
    let address = if let Some(name) = path.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        SocketAddr::from_abstract_name(name.as_bytes())
    } else {
        SocketAddr::from_pathname(&path)
    };
    let (Ok(address), Ok(socket)) = (address, UnixDatagram::unbound()) else {
        return;
    };
    let _ = socket.send_to_addr(state.as_bytes(), &address);
}

/// `RELOADING=1` with the `MONOTONIC_USEC` systemd wants alongside it.
pub fn reloading() {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1_000)
        .unwrap_or(0);
    notify(&format!("RELOADING=1\nMONOTONIC_USEC={now}"));
}
