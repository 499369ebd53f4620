//! The HTML directory listing (`list_directories = true`), every name escaped.

use percent_encoding::{utf8_percent_encode, AsciiSet, CONTROLS};
use std::fmt::Write;
use std::io;
use std::path::Path;

/// Characters escaped in a path segment of an href. `:` too, so that no name can turn a
/// relative link into a scheme (`javascript:…`); the links also start with `./`.
const SEGMENT: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b':')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}')
    .add(b'/')
    .add(b'\\')
    .add(b'\'')
    .add(b'&');

/// Escapes text for HTML. Control and bidirectional-formatting characters are shown as
/// `[U+202E]`: an entity would still reorder the text ("gpj.exe" shown as "exe.jpg").
pub(crate) fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if crate::log::is_unsafe_char(c) => {
                let _ = write!(out, "[U+{:04X}]", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out
}

/// `dir` is a path that names the already-checked directory (its /proc/self/fd entry);
/// `url_path` is the request's canonical (decoded) path, ending in '/'.
pub(crate) fn render(dir: &Path, url_path: &str, show_hidden: bool) -> io::Result<String> {
    let mut entries: Vec<(bool, String, u64)> = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') && !show_hidden {
            continue;
        }
        let ft = entry.file_type()?;
        let is_dir = ft.is_dir()
            || (ft.is_symlink() && std::fs::metadata(entry.path()).is_ok_and(|m| m.is_dir()));
        let size = if is_dir {
            0
        } else {
            entry.metadata().map(|m| m.len()).unwrap_or(0)
        };
        entries.push((is_dir, name, size));
    }
    // Directories first, then by name.
    entries.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(&b.1)));

    let title = html_escape(url_path);
    let mut html = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>Index of {title}</title></head>\n<body><h1>Index of {title}</h1>\n<ul>\n"
    );
    if url_path != "/" {
        html.push_str("<li><a href=\"../\">../</a></li>\n");
    }
    for (is_dir, name, size) in entries {
        let slash = if is_dir { "/" } else { "" };
        let href = utf8_percent_encode(&name, SEGMENT);
        let label = html_escape(&name);
        if is_dir {
            let _ = writeln!(
                html,
                "<li><a href=\"./{href}{slash}\">{label}{slash}</a></li>"
            );
        } else {
            let _ = writeln!(
                html,
                "<li><a href=\"./{href}\">{label}</a> ({size} bytes)</li>"
            );
        }
    }
    html.push_str("</ul>\n</body></html>\n");
    Ok(html)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes() {
        assert_eq!(
            html_escape("<a href='x'>&\""),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;"
        );
        assert_eq!(
            utf8_percent_encode("a b\"<>?#%/x", SEGMENT).to_string(),
            "a%20b%22%3C%3E%3F%23%25%2Fx"
        );
        assert_eq!(
            utf8_percent_encode("javascript:alert(1)", SEGMENT).to_string(),
            "javascript%3Aalert(1)"
        );
        assert_eq!(
            html_escape("a\u{202e}gpj.exe\n"),
            "a[U+202E]gpj.exe[U+000A]"
        );
    }
}
