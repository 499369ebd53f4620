//! RLIMIT_NOFILE. systemd starts services with a soft limit of 1024 (for select(2)'s sake)
//! and a high hard limit, and expects programs that need more to raise the soft limit
//! themselves (systemd.exec(5), LimitNOFILE=). gatehouse does so at start with gatehouse-kit's
//! `rlimit` (prlimit64: the unit's seccomp filter denies setrlimit, in @resources), and warns
//! when `max_connections` cannot fit: beyond the limit accept() fails with EMFILE and clients
//! wait in the backlog.

use crate::config::{Config, RouteAction};

/// Listeners, the epoll and notify fds, the journal, the admin socket and such.
const RESERVED: u64 = 64;

/// Raises the soft limit to the hard one (the kit's prlimit64); logs what it could not do.
pub(crate) fn raise() {
    match gatehouse_kit::rlimit::raise_nofile() {
        Ok(limit) if limit.soft > limit.before => tracing::debug!(
            from = limit.before,
            to = limit.soft,
            "raised the soft RLIMIT_NOFILE"
        ),
        Ok(_) => {}
        // `check` reports the limits themselves when max_connections does not fit them.
        Err(e) => {
            tracing::warn!(error = %e, "cannot raise the soft RLIMIT_NOFILE to the hard limit")
        }
    }
}

/// File descriptors each connection of `config` may hold: its socket, and one more where a
/// route opens files or upstream connections.
fn per_connection(config: &Config) -> u64 {
    let second_fd = config.sites.iter().any(|s| {
        s.routes
            .iter()
            .any(|r| matches!(r.action, RouteAction::Static(_) | RouteAction::Proxy(_)))
    });
    if second_fd {
        2
    } else {
        1
    }
}

/// Warns when `config`'s max_connections cannot fit under the current limit.
pub(crate) fn check(config: &Config) {
    let Ok((soft, hard)) = gatehouse_kit::rlimit::nofile() else {
        return;
    };
    let per_connection = per_connection(config);
    let max = config.server.max_connections as u64;
    let needed = max * per_connection + RESERVED;
    if needed <= soft {
        return;
    }
    let fit = soft.saturating_sub(RESERVED) / per_connection;
    tracing::warn!(
        max_connections = max,
        needed,
        soft_limit = soft,
        hard_limit = hard,
        "max_connections = {max} may need {needed} file descriptors but RLIMIT_NOFILE is {} \
         (hard limit {}): past about {fit} connections accept() fails with EMFILE and clients \
         wait in the backlog; raise LimitNOFILE= in the unit (`systemctl edit gatehouse`) or \
         lower max_connections",
        soft,
        hard,
    );
}
