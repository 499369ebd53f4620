//! Link flags for the gatehouse binary.

use std::process::Command;

const LINK_ORDER: &str = "packaging/link-order.txt";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={LINK_ORDER}");
    println!("cargo:rerun-if-env-changed=GATEHOUSE_NO_LINK_ORDER");
    let target = std::env::var("TARGET").unwrap_or_default();
    if target.ends_with("-linux-gnu") {
        // RELR packs the ~18k relative relocations of this PIE from 436 KB (.rela.dyn) into
        // a few KB. ld.so reads them all at every start, so each page stayed resident:
        // ≈ 0.4 MiB less RSS, and less work before the first request. Needs glibc ≥ 2.36
        // and binutils ≥ 2.38 (Debian 12).
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
    if orders_functions(&target) && std::env::var_os("GATEHOUSE_NO_LINK_ORDER").is_none() {
        // The functions a serving gatehouse runs, laid out together (packaging/link-order.sh
        // says why and how the list is made): idle RSS 6.6-7.1 -> 4.2-4.7 MiB. Names the binary
        // no longer has are skipped quietly; a stale list costs locality, never correctness.
        let list = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(LINK_ORDER);
        if list.exists() {
            println!(
                "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
                list.display()
            );
            println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
        }
    }
}

/// --symbol-ordering-file is an lld option. rustc links x86_64-unknown-linux-gnu with its
/// own lld since 1.90 unless a linker is configured; GNU ld would reject the flag. Release
/// builds only: the order is made for, and measured on, the optimised binary.
fn orders_functions(target: &str) -> bool {
    if target != "x86_64-unknown-linux-gnu"
        || std::env::var("PROFILE").as_deref() != Ok("release")
        || std::env::var_os("RUSTC_LINKER").is_some()
    {
        return false;
    }
    let flags = std::env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    if flags.contains("linker") {
        return false;
    }
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let version = Command::new(rustc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .unwrap_or_default();
    // "rustc 1.95.0 (59807616e 2026-04-14)"
    let minor = version
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.split('.').nth(1))
        .and_then(|m| m.parse::<u32>().ok());
    matches!(minor, Some(m) if m >= 90)
}
