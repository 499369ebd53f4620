//! Content-Type from the file extension (mime_guess's full table), with `charset=utf-8` for
//! text types, as browsers otherwise guess the encoding. The common web types are answered
//! from a static table first: no lookup and no allocation on the hot path.

use http::HeaderValue;
use std::path::Path;

pub(crate) fn content_type(path: &Path) -> HeaderValue {
    let ext = extension(path);
    if let Some(v) = common(ext) {
        return HeaderValue::from_static(v);
    }
    let mime = mime_guess::from_ext(ext)
        .first_raw()
        .unwrap_or("application/octet-stream");
    if is_text(mime) {
        HeaderValue::from_str(&format!("{mime}; charset=utf-8"))
            .unwrap_or(HeaderValue::from_static("application/octet-stream"))
    } else {
        HeaderValue::from_static(mime)
    }
}

/// `Path::extension` of a file path, without its component parser (this runs per request):
/// the text after the last '.' of the last segment, "" for none or a leading-dot name.
fn extension(path: &Path) -> &str {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    let name = &bytes[bytes.iter().rposition(|&b| b == b'/').map_or(0, |i| i + 1)..];
    match name.iter().rposition(|&b| b == b'.') {
        Some(dot) if dot > 0 => std::str::from_utf8(&name[dot + 1..]).unwrap_or(""),
        _ => "",
    }
}

fn common(ext: &str) -> Option<&'static str> {
    Some(match ext {
        "html" | "htm" => "text/html; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "json" => "application/json; charset=utf-8",
        "txt" => "text/plain; charset=utf-8",
        "svg" => "image/svg+xml; charset=utf-8",
        "xml" => "text/xml; charset=utf-8",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "avif" => "image/avif",
        "ico" => "image/x-icon",
        "woff2" => "font/woff2",
        "woff" => "font/woff",
        "wasm" => "application/wasm",
        "pdf" => "application/pdf",
        "bin" => "application/octet-stream",
        _ => return None,
    })
}

/// Textual types: they get a charset and may be compressed on the fly.
pub(crate) fn is_text(mime: &str) -> bool {
    // A byte search: str::split(char) goes through the generic char searcher.
    let essence = match mime.bytes().position(|b| b == b';') {
        Some(i) => &mime[..i],
        None => mime,
    }
    .trim();
    essence.starts_with("text/")
        || matches!(
            essence,
            "application/javascript"
                | "application/json"
                | "application/xml"
                | "application/manifest+json"
                | "application/ld+json"
                | "application/rss+xml"
                | "application/atom+xml"
                | "application/xhtml+xml"
                | "image/svg+xml"
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extensions_match_path_extension() {
        for p in [
            "a.html",
            "dir/a.tar.gz",
            ".bashrc",
            "dir/.hidden",
            "noext",
            "a.",
            "d.x/file",
            "d.x/file.js",
            "üñí.cödé",
            "",
        ] {
            let path = Path::new(p);
            let expected = path.extension().and_then(|e| e.to_str()).unwrap_or("");
            assert_eq!(extension(path), expected, "{p:?}");
        }
    }

    #[test]
    fn types() {
        assert_eq!(
            content_type(Path::new("a.html")),
            "text/html; charset=utf-8"
        );
        assert_eq!(content_type(Path::new("a.css")), "text/css; charset=utf-8");
        assert_eq!(
            content_type(Path::new("a.js")),
            "text/javascript; charset=utf-8"
        );
        assert_eq!(
            content_type(Path::new("a.svg")),
            "image/svg+xml; charset=utf-8"
        );
        assert_eq!(content_type(Path::new("a.png")), "image/png");
        assert_eq!(content_type(Path::new("a.woff2")), "font/woff2");
        assert_eq!(
            content_type(Path::new("a.md")),
            "text/markdown; charset=utf-8"
        );
        assert_eq!(content_type(Path::new("a.mp4")), "video/mp4");
        assert_eq!(content_type(Path::new("noext")), "application/octet-stream");
    }

    #[test]
    fn the_fast_table_agrees_with_mime_guess() {
        // Not "woff": mime_guess still says application/font-woff; font/woff is RFC 8081's.
        for ext in [
            "html", "css", "js", "json", "txt", "svg", "png", "jpg", "gif", "webp", "ico", "woff2",
            "wasm", "pdf",
        ] {
            let fast = common(ext).unwrap();
            let slow = mime_guess::from_ext(ext).first_raw().unwrap();
            assert!(fast.starts_with(slow), "{ext}: {fast} vs {slow}");
        }
    }
}
