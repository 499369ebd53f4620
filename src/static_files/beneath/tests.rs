//! The walk and the openat2 lookup against one tree: they must answer alike.

use super::*;
use std::io::Read;
use std::os::unix::fs::symlink;

/// base/root holds the documents; base/outside/secret.txt must never be reached.
fn tree() -> (tempfile::TempDir, PathBuf) {
    let base = tempfile::tempdir().unwrap();
    let root = base.path().join("root");
    let outside = base.path().join("outside");
    std::fs::create_dir_all(root.join("sub/deeper")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret.txt"), "SECRET").unwrap();
    std::fs::write(root.join("index.html"), "index").unwrap();
    std::fs::write(root.join("sub/page.html"), "page").unwrap();
    std::fs::write(root.join("sub/deeper/x.txt"), "x").unwrap();
    let l = |target: &Path, name: &str| symlink(target, root.join(name)).unwrap();
    l(Path::new("index.html"), "rel_in");
    l(Path::new("sub/deeper"), "to_deeper");
    l(Path::new("../page.html"), "sub/deeper/up");
    l(&root.join("sub/page.html"), "abs_in");
    l(&root.join("sub"), "abs_dir");
    l(&root.join("../root/index.html"), "abs_dotdot");
    l(&outside.join("secret.txt"), "abs_out");
    l(&outside, "abs_out_dir");
    l(Path::new("../outside/secret.txt"), "rel_out");
    l(Path::new("sub/../../outside/secret.txt"), "rel_out_deep");
    l(Path::new("../root/index.html"), "leave_and_return");
    l(Path::new("/proc/self/root/etc/passwd"), "magic");
    l(Path::new("missing"), "dangling");
    l(Path::new("loop_b"), "loop_a");
    l(Path::new("loop_a"), "loop_b");
    // chain_0 → chain_1 → … → chain_40 → index.html: 41 links from chain_0, 40 from chain_1.
    for i in 0..MAX_LINKS {
        l(
            Path::new(&format!("chain_{}", i + 1)),
            &format!("chain_{i}"),
        );
    }
    l(Path::new("index.html"), &format!("chain_{MAX_LINKS}"));
    (base, root)
}

/// What a lookup of `rel` gives: the file's content, "dir", or the errno.
fn outcome(root: &RootFd, rel: &str, via: &dyn Fn(&RootFd, &Path) -> io::Result<Found>) -> String {
    match via(root, Path::new(rel)) {
        Ok(f) if f.stat.is_dir() => "dir".into(),
        Ok(f) => {
            let (mut file, _) = f.open_for_reading(root, Path::new(rel)).unwrap();
            let mut s = String::new();
            file.read_to_string(&mut s).unwrap();
            s
        }
        Err(e) => format!("errno {}", e.raw_os_error().unwrap_or(0)),
    }
}

const ENOENT: &str = "errno 2";
const ENOTDIR: &str = "errno 20";
const EXDEV: &str = "errno 18";
const ELOOP: &str = "errno 40";

#[test]
fn inside_root_follows_only_links_that_stay_beneath() {
    let (_base, root_path) = tree();
    let root = RootFd::open(&root_path).unwrap();
    let cases = [
        ("", "dir"),
        ("index.html", "index"),
        ("sub", "dir"),
        ("sub/deeper/x.txt", "x"),
        ("missing", ENOENT),
        ("index.html/x", ENOTDIR),
        ("rel_in", "index"),
        ("to_deeper/x.txt", "x"),
        // `..` after a link is the parent of where the link led (physical, as the kernel).
        ("to_deeper/../page.html", "page"),
        ("sub/deeper/up", "page"),
        ("abs_in", "page"),
        ("abs_dir/deeper/x.txt", "x"),
        ("abs_dotdot", EXDEV),
        ("abs_out", EXDEV),
        ("abs_out_dir/secret.txt", EXDEV),
        ("rel_out", EXDEV),
        ("rel_out_deep", EXDEV),
        ("leave_and_return", EXDEV),
        ("magic", EXDEV),
        ("dangling", ENOENT),
        ("loop_a", ELOOP),
        ("chain_1", "index"),
        ("chain_0", ELOOP),
    ];
    let walked = |r: &RootFd, p: &Path| walk(r, rel_bytes(p), true);
    let looked_up = |r: &RootFd, p: &Path| lookup(r, p, FollowSymlinks::InsideRoot);
    for (rel, want) in cases {
        assert_eq!(outcome(&root, rel, &walked), want, "walk {rel:?}");
        assert_eq!(outcome(&root, rel, &looked_up), want, "lookup {rel:?}");
    }
}

#[test]
fn never_refuses_every_link() {
    let (_base, root_path) = tree();
    let root = RootFd::open(&root_path).unwrap();
    let walked = |r: &RootFd, p: &Path| walk(r, rel_bytes(p), false);
    let looked_up = |r: &RootFd, p: &Path| lookup(r, p, FollowSymlinks::Never);
    for (rel, want) in [
        ("sub/page.html", "page"),
        ("rel_in", ELOOP),
        ("to_deeper/x.txt", ELOOP),
        ("abs_in", ELOOP),
        ("abs_out", ELOOP),
    ] {
        assert_eq!(outcome(&root, rel, &walked), want, "walk {rel:?}");
        assert_eq!(outcome(&root, rel, &looked_up), want, "lookup {rel:?}");
    }
}

#[test]
fn absolute_links_may_name_the_root_by_its_configured_or_its_real_path() {
    let (base, root_path) = tree();
    // The root configured through a symlink, as a deploy's `current` link would be.
    let alias = base.path().join("current");
    symlink(&root_path, &alias).unwrap();
    symlink(alias.join("index.html"), root_path.join("via_alias")).unwrap();
    symlink(
        "/.//".to_owned() + root_path.to_str().unwrap() + "/./index.html",
        root_path.join("untidy"),
    )
    .unwrap();
    // Another alias than the configured one is not resolved: that would mean walking
    // outside the root.
    for (configured, via_alias) in [(&root_path, EXDEV), (&alias, "index")] {
        let root = RootFd::open(configured).unwrap();
        let walked = |r: &RootFd, p: &Path| walk(r, rel_bytes(p), true);
        assert_eq!(
            outcome(&root, "abs_in", &walked),
            "page",
            "root {configured:?}"
        );
        assert_eq!(
            outcome(&root, "via_alias", &walked),
            via_alias,
            "root {configured:?}"
        );
        assert_eq!(
            outcome(&root, "untidy", &walked),
            "index",
            "root {configured:?}"
        );
        assert_eq!(
            outcome(&root, "abs_out", &walked),
            EXDEV,
            "root {configured:?}"
        );
    }
}

#[test]
fn prefixes_match_whole_components() {
    assert_eq!(strip_prefix(b"/srv/www/a", b"/srv/www"), Some(&b"/a"[..]));
    assert_eq!(strip_prefix(b"/srv/www", b"/srv/www/"), Some(&b""[..]));
    assert_eq!(
        strip_prefix(b"//srv/./www//a", b"/srv/www"),
        Some(&b"//a"[..])
    );
    assert_eq!(strip_prefix(b"/srv/wwwx/a", b"/srv/www"), None);
    assert_eq!(strip_prefix(b"/srv/../srv/www/a", b"/srv/www"), None);
    assert_eq!(strip_prefix(b"/srv", b"/srv/www"), None);
    assert_eq!(strip_prefix(b"/anything", b"/"), Some(&b"/anything"[..]));
}

#[test]
fn a_file_swapped_after_the_lookup_is_not_read() {
    let (_base, root_path) = tree();
    let root = RootFd::open(&root_path).unwrap();
    let found = walk(&root, b"sub/page.html", true).unwrap();
    // Replaced by a symlink to the secret between the lookup and the open.
    std::fs::remove_file(root_path.join("sub/page.html")).unwrap();
    symlink(
        root_path.join("../outside/secret.txt"),
        root_path.join("sub/page.html"),
    )
    .unwrap();
    let err = found
        .open_for_reading(&root, Path::new("sub/page.html"))
        .unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ELOOP));

    // A directory found, then replaced by a link to one outside.
    let found = walk(&root, b"sub/deeper", true).unwrap();
    assert!(found.stat.is_dir());
    std::fs::rename(root_path.join("sub/deeper"), root_path.join("sub/moved")).unwrap();
    symlink(root_path.join("../outside"), root_path.join("sub/deeper")).unwrap();
    let err = found.into_dir(&root).unwrap_err();
    // O_DIRECTORY | O_NOFOLLOW on a symlink: "not a directory".
    assert_eq!(err.raw_os_error(), Some(libc::ENOTDIR));
}
