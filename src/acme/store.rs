//! ACME state on disk: the account and one certificate + key per managed name set, under
//! `<state_dir>/<CA>/`. Files are 0600 in a 0700 directory and replaced atomically (temp
//! file, fsync, rename, fsync of the directory), so a crash mid-write leaves the old file.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

pub(crate) const ACCOUNT_FILE: &str = "account.json";

/// One certificate's file: `<ca_dir>/<stem>.pem`, the private key followed by the chain
/// (leaf first). One file, so key and certificate are replaced together, atomically.
pub(crate) fn cert_path(ca_dir: &Path, names: &[String]) -> PathBuf {
    ca_dir.join(format!("{}.pem", file_stem(names)))
}

/// The first name, plus a hash of the whole set when there are more: two sites that share
/// a first name but not the rest never overwrite each other.
fn file_stem(names: &[String]) -> String {
    let first = names.first().map_or("cert", String::as_str);
    if names.len() <= 1 {
        return first.to_owned();
    }
    // FNV-1a: stable across builds and platforms (std's hasher is not).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in names.join(",").bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    format!("{first}+{}-{:08x}", names.len() - 1, h as u32)
}

/// Creates the directory (and parents) owner-only.
pub(crate) fn ensure_dir(dir: &Path) -> std::io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Writes `bytes` to `path` so that readers see the old or the new file, never a torn one.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    ensure_dir(dir)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("state");
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Reads a state file; a missing one is `Ok(None)`.
pub(crate) fn read(path: &Path) -> std::io::Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn atomic_writes_are_private_and_replace() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca/account.json");
        write_atomic(&path, b"one").unwrap();
        write_atomic(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        // No temp file is left behind.
        assert_eq!(fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
        assert_eq!(read(&dir.path().join("nope")).unwrap(), None);
    }

    #[test]
    fn stems_tell_name_sets_apart() {
        let one = cert_path(Path::new("/s"), &["a.test".into()]);
        assert_eq!(one, Path::new("/s/a.test.pem"));
        let two = cert_path(Path::new("/s"), &["a.test".into(), "b.test".into()]);
        let other = cert_path(Path::new("/s"), &["a.test".into(), "c.test".into()]);
        assert_ne!(two, other);
        assert!(two.to_str().unwrap().starts_with("/s/a.test+1-"));
    }
}
