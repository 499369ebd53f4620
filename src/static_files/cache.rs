//! Contents of small, hot files, keyed by path and checked against the stat the lookup
//! returns on every request (device, inode, size, mtime to the nanosecond): a changed file
//! is never served from here, and a hit skips the open, fstat, read and close.

use super::path::Stat;
use bytes::Bytes;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Files up to this size are kept.
pub(crate) const MAX_ENTRY: u64 = 32 * 1024;
/// Bytes kept per `static` route at most.
const MAX_TOTAL: usize = 2 << 20;

#[derive(Clone, Default)]
pub(crate) struct FileCache {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Default)]
struct Inner {
    map: HashMap<PathBuf, Entry>,
    bytes: usize,
}

struct Entry {
    identity: Identity,
    data: Bytes,
}

#[derive(PartialEq, Eq)]
struct Identity {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl Identity {
    fn of(meta: &Stat) -> Identity {
        Identity {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime: meta.mtime(),
            mtime_nsec: meta.mtime_nsec(),
        }
    }
}

impl FileCache {
    /// The cached content of `rel`, if it is still the file `meta` describes.
    pub(crate) fn get(&self, rel: &Path, meta: &Stat) -> Option<Bytes> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let entry = inner.map.get(rel)?;
        (entry.identity == Identity::of(meta)).then(|| entry.data.clone())
    }

    pub(crate) fn insert(&self, rel: &Path, meta: &Stat, data: Bytes) {
        if data.len() as u64 > MAX_ENTRY || data.len() as u64 != meta.size() {
            return;
        }
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = inner.map.remove(rel) {
            inner.bytes -= old.data.len();
        }
        // Evict arbitrary entries until it fits: hot files come straight back.
        while inner.bytes + data.len() > MAX_TOTAL {
            let Some(key) = inner.map.keys().next().cloned() else {
                break;
            };
            if let Some(old) = inner.map.remove(&key) {
                inner.bytes -= old.data.len();
            }
        }
        inner.bytes += data.len();
        inner.map.insert(
            rel.to_path_buf(),
            Entry {
                identity: Identity::of(meta),
                data,
            },
        );
    }
}

impl std::fmt::Debug for FileCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FileCache")
    }
}
