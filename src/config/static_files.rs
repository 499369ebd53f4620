//! The `static` route's config section: its file format and validation into plain values
//! (`static_files::StaticRoute` adds the open root and the file cache).

use crate::config::ErrorSink;
use globset::{Glob, GlobMatcher};
use serde::Deserialize;
use serde_spanned::Spanned;
use std::path::PathBuf;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStatic {
    pub(crate) root: Spanned<String>,
    pub(crate) index: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub(crate) precompressed: Vec<Spanned<String>>,
    pub(crate) spa_fallback: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) list_directories: bool,
    #[serde(default)]
    pub(crate) cache_control: Vec<Spanned<RawCacheRule>>,
    pub(crate) follow_symlinks: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) serve_hidden: bool,
    #[serde(default)]
    pub(crate) compress: Vec<Spanned<String>>,
    pub(crate) compress_min_size: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCacheRule {
    pub(crate) pattern: Spanned<String>,
    pub(crate) value: Spanned<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Encoding {
    Brotli,
    Zstd,
    Gzip,
}

impl Encoding {
    fn parse(s: &str) -> Option<Encoding> {
        match s {
            "br" => Some(Encoding::Brotli),
            "zstd" => Some(Encoding::Zstd),
            "gzip" => Some(Encoding::Gzip),
            _ => None,
        }
    }

    /// The Content-Encoding token.
    pub(crate) fn token(self) -> &'static str {
        match self {
            Encoding::Brotli => "br",
            Encoding::Zstd => "zstd",
            Encoding::Gzip => "gzip",
        }
    }

    /// The precompressed sibling's suffix: `file.css.br`, `.zst`, `.gz`.
    pub(crate) fn suffix(self) -> &'static str {
        match self {
            Encoding::Brotli => ".br",
            Encoding::Zstd => ".zst",
            Encoding::Gzip => ".gz",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FollowSymlinks {
    /// Follow symlinks whose target stays inside the root (the default).
    InsideRoot,
    Always,
    Never,
}

#[derive(Debug, Clone)]
pub(crate) struct CacheRule {
    pub(crate) matcher: GlobMatcher,
    pub(crate) value: http::HeaderValue,
}

#[derive(Debug, Clone)]
pub(crate) struct StaticConfig {
    /// The document root (absolute).
    pub(crate) root: PathBuf,
    pub(crate) index: Vec<String>,
    pub(crate) precompressed: Vec<Encoding>,
    pub(crate) spa_fallback: Option<String>,
    pub(crate) list_directories: bool,
    pub(crate) cache_control: Vec<CacheRule>,
    pub(crate) follow_symlinks: FollowSymlinks,
    pub(crate) serve_hidden: bool,
    pub(crate) compress: Vec<Encoding>,
    pub(crate) compress_min_size: u64,
}

impl StaticConfig {
    /// Defaults for `serve --root DIR`.
    pub(crate) fn for_root(root: PathBuf) -> StaticConfig {
        StaticConfig {
            root,
            index: vec!["index.html".into()],
            precompressed: Vec::new(),
            spa_fallback: None,
            list_directories: false,
            cache_control: Vec::new(),
            follow_symlinks: FollowSymlinks::InsideRoot,
            serve_hidden: false,
            compress: Vec::new(),
            compress_min_size: 1024,
        }
    }

    pub(crate) fn from_raw(raw: &RawStatic, sink: &mut ErrorSink) -> Option<StaticConfig> {
        let before = sink.len();
        let root = PathBuf::from(raw.root.get_ref());
        if !root.is_absolute() {
            sink.push(
                Some(raw.root.span()),
                "`root` must be an absolute path",
                None,
            );
        } else if !root.is_dir() {
            sink.push(
                Some(raw.root.span()),
                format!("`root` {} is not a readable directory", root.display()),
                Some("create it, or fix the path"),
            );
        }
        let mut cfg = StaticConfig::for_root(root);
        if let Some(index) = &raw.index {
            cfg.index = index
                .iter()
                .filter_map(|i| plain_file_name(i, "index", sink))
                .collect();
        }
        cfg.precompressed = encodings(&raw.precompressed, sink);
        cfg.compress = encodings(&raw.compress, sink);
        if let Some(n) = &raw.compress_min_size {
            match u64::try_from(*n.get_ref()) {
                Ok(v) => cfg.compress_min_size = v,
                Err(_) => sink.push(Some(n.span()), "`compress_min_size` must be ≥ 0", None),
            }
        }
        if let Some(f) = &raw.spa_fallback {
            let path = f.get_ref().trim_start_matches('/');
            if path.is_empty() || path.split('/').any(|s| s == ".." || s == ".") {
                sink.push(
                    Some(f.span()),
                    "`spa_fallback` is a file path relative to `root`, without `..`",
                    None,
                );
            } else {
                cfg.spa_fallback = Some(path.to_owned());
            }
        }
        cfg.list_directories = raw.list_directories;
        cfg.serve_hidden = raw.serve_hidden;
        if let Some(f) = &raw.follow_symlinks {
            match f.get_ref().as_str() {
                "inside_root" => cfg.follow_symlinks = FollowSymlinks::InsideRoot,
                "always" => cfg.follow_symlinks = FollowSymlinks::Always,
                "never" => cfg.follow_symlinks = FollowSymlinks::Never,
                other => sink.push(
                    Some(f.span()),
                    format!("unknown `follow_symlinks` value {other:?}"),
                    Some("use \"inside_root\", \"always\" or \"never\""),
                ),
            }
        }
        for rule in &raw.cache_control {
            let rule = rule.get_ref();
            let glob = Glob::new(rule.pattern.get_ref());
            let value = http::HeaderValue::from_str(rule.value.get_ref());
            match (glob, value) {
                (Ok(g), Ok(v)) => cfg.cache_control.push(CacheRule {
                    matcher: g.compile_matcher(),
                    value: v,
                }),
                (Err(e), _) => sink.push(Some(rule.pattern.span()), format!("bad glob: {e}"), None),
                (_, Err(_)) => sink.push(Some(rule.value.span()), "not a valid header value", None),
            }
        }
        (sink.len() == before).then_some(cfg)
    }
}

fn plain_file_name(s: &Spanned<String>, key: &str, sink: &mut ErrorSink) -> Option<String> {
    let name = s.get_ref();
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        sink.push(
            Some(s.span()),
            format!("`{key}` entries are file names such as \"index.html\""),
            None,
        );
        return None;
    }
    Some(name.clone())
}

fn encodings(raw: &[Spanned<String>], sink: &mut ErrorSink) -> Vec<Encoding> {
    raw.iter()
        .filter_map(|e| match Encoding::parse(e.get_ref()) {
            Some(enc) => Some(enc),
            None => {
                sink.push(
                    Some(e.span()),
                    format!("unknown encoding {:?}", e.get_ref()),
                    Some("use \"br\", \"zstd\" or \"gzip\""),
                );
                None
            }
        })
        .collect()
}
