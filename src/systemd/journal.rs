//! The systemd journal: is our stderr connected to it, and a tracing layer that speaks its
//! native protocol (tracing-journald) with our field names unprefixed.

use std::os::fd::AsRawFd;

/// True when JOURNAL_STREAM names the device:inode of our stderr, i.e. systemd connected
/// stderr to journald (systemd.exec(5)). tracing-journald does not check this itself.
pub(crate) fn stderr_is_journal() -> bool {
    let Ok(value) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value.split_once(':') else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat writes into `st` and we read it only on success.
    let rc = unsafe { libc::fstat(std::io::stderr().as_raw_fd(), st.as_mut_ptr()) };
    if rc != 0 {
        return false;
    }
    // SAFETY: fstat succeeded, so it initialised `st`.
    let st = unsafe { st.assume_init() };
    st.st_dev == dev && st.st_ino == ino
}

/// A tracing layer that writes structured entries to /run/systemd/journal/socket; custom
/// fields keep their own names (HTTP_STATUS, not F_HTTP_STATUS) so `journalctl` filters work.
/// Levels map to syslog priorities as other daemons use them: INFO is 6 (info), not
/// tracing-journald's default 5 (notice), so `journalctl -p notice` hides the access log.
pub(crate) fn layer() -> std::io::Result<tracing_journald::Layer> {
    use tracing_journald::{Priority, PriorityMappings};
    Ok(tracing_journald::layer()?
        .with_field_prefix(None)
        .with_syslog_identifier("gatehouse".to_owned())
        .with_priority_mappings(PriorityMappings {
            error: Priority::Error,
            warn: Priority::Warning,
            info: Priority::Informational,
            debug: Priority::Debug,
            trace: Priority::Debug,
        }))
}

/// Where journald takes native-protocol entries (systemd-journald.service(8)).
const JOURNAL_SOCKET: &str = "/run/systemd/journal/socket";

/// An unbound datagram socket and journald's address. Each send names the address (as
/// tracing-journald does) rather than connecting once: a restarted journald's new socket
/// is found at the same path.
pub(crate) struct JournalSocket {
    socket: std::os::unix::net::UnixDatagram,
    addr: libc::sockaddr_un,
    addr_len: libc::socklen_t,
}

impl JournalSocket {
    pub(crate) fn open() -> std::io::Result<JournalSocket> {
        JournalSocket::at(std::path::Path::new(JOURNAL_SOCKET))
    }

    /// A socket that sends to `path` (tests use their own).
    pub(crate) fn at(path: &std::path::Path) -> std::io::Result<JournalSocket> {
        use std::os::unix::ffi::OsStrExt;
        // SAFETY: all-zero is a valid sockaddr_un; family and path are filled in below.
        let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        let bytes = path.as_os_str().as_bytes();
        if bytes.len() >= addr.sun_path.len() {
            return Err(std::io::Error::from(std::io::ErrorKind::InvalidInput));
        }
        for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
            *dst = *src as libc::c_char;
        }
        let addr_len = std::mem::offset_of!(libc::sockaddr_un, sun_path) + bytes.len() + 1;
        Ok(JournalSocket {
            socket: std::os::unix::net::UnixDatagram::unbound()?,
            addr,
            addr_len: addr_len as libc::socklen_t,
        })
    }
}

/// Journal entries in the native protocol (one datagram each), queued and then sent
/// together with one sendmmsg(2) instead of a sendmsg per entry.
#[derive(Default)]
pub(crate) struct EntryBatch {
    bytes: Vec<u8>,
    /// Where each complete entry ends in `bytes`.
    ends: Vec<usize>,
}

/// Datagrams per sendmmsg call (the kernel caps one call at UIO_MAXIOV = 1024).
const PER_CALL: usize = 64;

impl EntryBatch {
    pub(crate) const fn new() -> EntryBatch {
        EntryBatch {
            bytes: Vec::new(),
            ends: Vec::new(),
        }
    }

    /// Adds `KEY=value`; a value with a newline takes the protocol's length-prefixed form.
    pub(crate) fn field(&mut self, key: &str, value: &str) {
        self.bytes.extend_from_slice(key.as_bytes());
        if value.contains('\n') {
            self.bytes.push(b'\n');
            self.bytes
                .extend_from_slice(&(value.len() as u64).to_le_bytes());
        } else {
            self.bytes.push(b'=');
        }
        self.bytes.extend_from_slice(value.as_bytes());
        self.bytes.push(b'\n');
    }

    /// Closes the entry whose fields were added since the last call.
    pub(crate) fn end_entry(&mut self) {
        self.ends.push(self.bytes.len());
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Bytes queued, for the caller's flush threshold.
    pub(crate) fn queued_bytes(&self) -> usize {
        self.bytes.len()
    }

    /// Sends every complete entry and empties the batch. Entries journald refuses are
    /// dropped, as a log line on a broken stderr would be.
    pub(crate) fn send(&mut self, socket: &JournalSocket) {
        let complete = self.ends.last().copied().unwrap_or(0);
        let mut start = 0;
        let mut pending: Vec<(usize, usize)> = Vec::with_capacity(self.ends.len());
        for &end in &self.ends {
            pending.push((start, end));
            start = end;
        }
        let mut rest = &pending[..];
        while !rest.is_empty() {
            let chunk = &rest[..rest.len().min(PER_CALL)];
            let sent = self.send_chunk(socket, chunk);
            // One refused entry (too large, say) is skipped rather than retried forever.
            rest = &rest[sent.max(1).min(rest.len())..];
        }
        self.bytes.drain(..complete);
        self.ends.clear();
        // A burst must not pin a large buffer for the life of the process.
        if self.bytes.capacity() > 128 * 1024 {
            self.bytes.shrink_to(64 * 1024);
        }
    }

    /// One sendmmsg(2) for `entries`; returns how many datagrams went out.
    fn send_chunk(&self, socket: &JournalSocket, entries: &[(usize, usize)]) -> usize {
        let mut iovecs: Vec<libc::iovec> = entries
            .iter()
            .map(|&(s, e)| libc::iovec {
                iov_base: self.bytes[s..e].as_ptr() as *mut libc::c_void,
                iov_len: e - s,
            })
            .collect();
        let mut headers: Vec<libc::mmsghdr> = iovecs
            .iter_mut()
            .map(|iov| {
                // SAFETY: all-zero is a valid msghdr (no control data); name and data are
                // filled in below.
                let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
                h.msg_hdr.msg_name = &socket.addr as *const libc::sockaddr_un as *mut libc::c_void;
                h.msg_hdr.msg_namelen = socket.addr_len;
                h.msg_hdr.msg_iov = iov;
                h.msg_hdr.msg_iovlen = 1;
                h
            })
            .collect();
        loop {
            // SAFETY: `headers` points at `iovecs` and `socket.addr`, `iovecs` into
            // `self.bytes`; all outlive the call, and the kernel only reads them.
            let n = unsafe {
                libc::sendmmsg(
                    socket.socket.as_raw_fd(),
                    headers.as_mut_ptr(),
                    headers.len() as libc::c_uint,
                    libc::MSG_NOSIGNAL,
                )
            };
            if n >= 0 {
                return n as usize;
            }
            if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                return 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;

    #[test]
    fn a_batch_arrives_as_one_datagram_per_entry() {
        let dir = std::env::temp_dir().join(format!("gatehouse-journal-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("socket");
        let _ = std::fs::remove_file(&path);
        let rx = UnixDatagram::bind(&path).unwrap();
        rx.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let tx = JournalSocket::at(&path).unwrap();
        let mut batch = EntryBatch::new();
        for i in 0..100 {
            batch.field("MESSAGE", &format!("entry {i}"));
            batch.field("MULTI", "two\nlines");
            batch.end_entry();
        }
        // The receive queue may hold as few as 10 datagrams (net.unix.max_dgram_qlen):
        // read concurrently, as journald does.
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 256];
            let mut got = Vec::new();
            for _ in 0..100 {
                let n = rx.recv(&mut buf).unwrap();
                got.push(buf[..n].to_vec());
            }
            (rx, got)
        });
        batch.send(&tx);
        assert!(batch.is_empty() && batch.queued_bytes() == 0);
        let (rx, got) = reader.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        for (i, datagram) in got.iter().enumerate() {
            let mut want = format!("MESSAGE=entry {i}\nMULTI\n").into_bytes();
            want.extend_from_slice(&9u64.to_le_bytes());
            want.extend_from_slice(b"two\nlines\n");
            assert_eq!(datagram, &want);
        }
        let mut buf = [0u8; 256];
        rx.set_nonblocking(true).unwrap();
        assert!(rx.recv(&mut buf).is_err(), "nothing more");
    }
}
