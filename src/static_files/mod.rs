//! The `static` route kind: a document root served like nginx, with every lookup held beneath
//! the root's descriptor (see `path` and `beneath`). Order of work for one request: method → path decoding → open
//! beneath the root → directory handling / SPA fallback → representation (precompressed
//! sibling or on-the-fly compression) → preconditions → range → headers → body.

mod beneath;
mod body;
mod cache;
mod conditional;
mod listing;
mod mime;
mod negotiate;
pub(crate) mod path;
mod range;

pub(crate) use crate::config::static_files::StaticConfig;

use crate::config::static_files::Encoding;
use crate::http_base::{self, Body};
use crate::sendfile::FileRegions;
use body::{FileBody, ReaderBody};
use bytes::Bytes;
use conditional::{Precondition, Validators};
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use path::Stat;
use path::{OpenError, Opened, Reject};
use range::RangeRequest;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Files up to this size are read in one go; larger ones stream in bounded chunks.
const READ_WHOLE_MAX: u64 = 128 * 1024;
/// Larger bodies go out with sendfile(2) where the connection allows it: below this a
/// mapping and its unmapping cost more than the copy they save.
const SENDFILE_MIN: u64 = 128 * 1024;

/// A `static` route as it serves: its validated settings, the open root and the cache of
/// small files, built once per configuration generation.
pub(crate) struct StaticRoute {
    pub(crate) config: StaticConfig,
    root_dir: path::RootDir,
    /// Small hot files of this route, validated on every request.
    cache: cache::FileCache,
}

impl StaticRoute {
    pub(crate) fn new(config: StaticConfig) -> StaticRoute {
        StaticRoute {
            root_dir: path::RootDir::new(config.root.clone()),
            cache: Default::default(),
            config,
        }
    }
}

impl std::fmt::Debug for StaticRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.config.fmt(f)
    }
}

impl std::ops::Deref for StaticRoute {
    type Target = StaticConfig;
    fn deref(&self) -> &StaticConfig {
        &self.config
    }
}

/// `path` is the request's canonical path (see `request_path`): decoded once already.
pub(crate) async fn serve(
    cfg: &StaticRoute,
    route_path: &str,
    path: &str,
    req: Request<Incoming>,
    file_regions: Option<&Arc<FileRegions>>,
) -> Response<Body> {
    let (parts, _) = req.into_parts();
    let ask = Ask {
        method: &parts.method,
        headers: &parts.headers,
        file_regions,
    };
    handle(cfg, route_path, path, &parts.uri, &ask)
}

/// What the request asks of a file, and how its connection can take it.
struct Ask<'a> {
    method: &'a Method,
    headers: &'a HeaderMap,
    /// Large files go out with sendfile(2) (see `crate::sendfile`).
    file_regions: Option<&'a Arc<FileRegions>>,
}

fn handle(
    cfg: &StaticRoute,
    route_path: &str,
    url_path: &str,
    uri: &Uri,
    ask: &Ask<'_>,
) -> Response<Body> {
    if ask.method != Method::GET && ask.method != Method::HEAD {
        let mut resp = http_base::error(StatusCode::METHOD_NOT_ALLOWED);
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    let below = url_path
        .strip_prefix(route_path)
        .unwrap_or("")
        .trim_start_matches('/');
    let rel = match path::check(below, cfg.serve_hidden) {
        Ok(rel) => rel,
        Err(Reject::BadRequest) => return http_base::error(StatusCode::BAD_REQUEST),
        Err(Reject::NotFound) => return http_base::error(StatusCode::NOT_FOUND),
    };
    match open_source(cfg, &rel.path) {
        Ok(Found::File(source, meta)) => serve_file(cfg, ask, &rel.path, source, meta),
        Ok(Found::Dir(dir)) => {
            if !url_path.ends_with('/') {
                return redirect_to_slash(url_path, uri.query());
            }
            for index in &cfg.index {
                let candidate = rel.path.join(index);
                if let Ok(Found::File(source, meta)) = open_source(cfg, &candidate) {
                    return serve_file(cfg, ask, &candidate, source, meta);
                }
            }
            if cfg.list_directories {
                let proc = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
                match listing::render(&proc, url_path, cfg.serve_hidden) {
                    Ok(html) => return html_response(html),
                    Err(e) => tracing::warn!(error = %e, "cannot list directory"),
                }
            }
            http_base::error(StatusCode::FORBIDDEN)
        }
        Err(OpenError::NotFound) => match &cfg.spa_fallback {
            Some(fallback) if !rel.has_extension => {
                let fallback = Path::new(fallback);
                match open_source(cfg, fallback) {
                    Ok(Found::File(source, meta)) => serve_file(cfg, ask, fallback, source, meta),
                    _ => http_base::error(StatusCode::NOT_FOUND),
                }
            }
            _ => http_base::error(StatusCode::NOT_FOUND),
        },
        Err(OpenError::Forbidden) => http_base::error(StatusCode::FORBIDDEN),
        Err(OpenError::Io(e)) => {
            tracing::warn!(error = %e, path = %rel.path.display(), "static file error");
            http_base::error(StatusCode::INTERNAL_SERVER_ERROR)
        }
    }
}

/// Where a file's bytes come from.
enum Source {
    File(File),
    /// From the route's cache of small files, already checked against the file's metadata.
    Cached(Bytes),
}

enum Found {
    File(Source, Stat),
    Dir(std::os::fd::OwnedFd),
}

/// Opens `rel` beneath the root, or takes it from the cache when the probe shows the cached
/// copy is still that file.
fn open_source(cfg: &StaticRoute, rel: &Path) -> Result<Found, OpenError> {
    let hit = std::cell::RefCell::new(None);
    let known = |meta: &Stat| {
        let cached = cfg.cache.get(rel, meta);
        let found = cached.is_some();
        *hit.borrow_mut() = cached;
        found
    };
    match path::open_unless_known(&cfg.root_dir, rel, cfg.follow_symlinks, &known)? {
        Opened::Known(meta) => match hit.into_inner() {
            Some(bytes) => Ok(Found::File(Source::Cached(bytes), meta)),
            None => Err(OpenError::NotFound),
        },
        Opened::File(file, meta) => Ok(Found::File(Source::File(file), meta)),
        Opened::Dir(fd) => Ok(Found::Dir(fd)),
    }
}

/// Largest error page we serve from memory.
const ERROR_PAGE_MAX: u64 = 1 << 20;

/// Reads the site's error page `page` (a URL path below `route_path`): its bytes and type.
pub(crate) fn error_page(
    cfg: &StaticRoute,
    route_path: &str,
    page: &str,
) -> Option<(Bytes, HeaderValue)> {
    let below = page.strip_prefix(route_path)?.trim_start_matches('/');
    let rel = path::check(below, cfg.serve_hidden).ok()?;
    let Ok(Opened::File(file, meta)) = path::open(&cfg.root_dir, &rel.path, cfg.follow_symlinks)
    else {
        tracing::warn!(page, "error page not found");
        return None;
    };
    if meta.size() > ERROR_PAGE_MAX {
        return None;
    }
    let mut buf = Vec::with_capacity(meta.size() as usize);
    file.take(ERROR_PAGE_MAX).read_to_end(&mut buf).ok()?;
    Some((buf.into(), mime::content_type(&rel.path)))
}

/// `/dir` → `/dir/`, keeping the query. The canonical path has no repeated slash, so
/// `//evil.example` cannot become a protocol-relative redirect.
fn redirect_to_slash(canonical: &str, query: Option<&str>) -> Response<Body> {
    let path = crate::request_path::encode(canonical);
    let location = match query {
        Some(q) => format!("{path}/?{q}"),
        None => format!("{path}/"),
    };
    let mut resp = http_base::error(StatusCode::MOVED_PERMANENTLY);
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

fn html_response(html: String) -> Response<Body> {
    let mut resp = Response::new(http_base::full(html.into()));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    resp
}

/// One representation of the requested file.
struct Representation {
    source: Source,
    meta: Stat,
    /// Set when serving a precompressed sibling.
    encoding: Option<Encoding>,
}

fn serve_file(
    cfg: &StaticRoute,
    ask: &Ask<'_>,
    rel: &Path,
    source: Source,
    meta: Stat,
) -> Response<Body> {
    let (method, headers) = (ask.method, ask.headers);
    let content_type = mime::content_type(rel);
    let accept = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok());
    let rep = choose_precompressed(cfg, rel, accept).unwrap_or(Representation {
        source,
        meta,
        encoding: None,
    });
    let on_the_fly = rep.encoding.is_none()
        && rep.meta.size() >= cfg.compress_min_size
        && content_type.to_str().is_ok_and(mime::is_text);
    let on_the_fly = if on_the_fly {
        negotiate::acceptable(accept, &cfg.compress)
            .first()
            .copied()
    } else {
        None
    };

    let validators = match on_the_fly {
        // A compressed stream is not byte-identical to the file: a weak validator only.
        Some(enc) => {
            let v = Validators::of(&rep.meta, Some(enc.token()));
            Validators {
                etag: format!("W/{}", v.etag),
                modified: v.modified,
            }
        }
        None => Validators::of(&rep.meta, rep.encoding.map(Encoding::token)),
    };

    let mut builder = Response::builder()
        .header(header::ETAG, &validators.etag)
        .header(header::LAST_MODIFIED, validators.last_modified());
    if !cfg.precompressed.is_empty() || !cfg.compress.is_empty() {
        builder = builder.header(header::VARY, "Accept-Encoding");
    }
    if let Some(rule) = cfg.cache_control.iter().find(|r| r.matcher.is_match(rel)) {
        builder = builder.header(header::CACHE_CONTROL, rule.value.clone());
    }

    let precondition = conditional::evaluate(method, headers, &validators);
    match precondition {
        Precondition::Proceed => {}
        Precondition::NotModified => {
            return builder
                .status(StatusCode::NOT_MODIFIED)
                .body(http_base::empty())
                .unwrap_or_else(|_| http_base::error(StatusCode::INTERNAL_SERVER_ERROR));
        }
        Precondition::Failed => return http_base::error(StatusCode::PRECONDITION_FAILED),
    }

    builder = builder.header(header::CONTENT_TYPE, content_type);
    let encoding = rep.encoding.or(on_the_fly);
    if let Some(enc) = encoding {
        builder = builder.header(header::CONTENT_ENCODING, enc.token());
    }
    let head = method == Method::HEAD;

    if let Some(enc) = on_the_fly {
        // Length unknown in advance, so no ranges on a compressed stream.
        let body = if head {
            http_base::empty()
        } else {
            compressed_body(rep.source, enc)
        };
        return builder
            .status(StatusCode::OK)
            .body(body)
            .unwrap_or_else(|_| http_base::error(StatusCode::INTERNAL_SERVER_ERROR));
    }

    let len = rep.meta.size();
    builder = builder.header(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    let range = if conditional::if_range_allows(headers, &validators) {
        range::parse(
            headers.get(header::RANGE).and_then(|v| v.to_str().ok()),
            len,
        )
    } else {
        RangeRequest::Full
    };
    let (status, start, count) = match range {
        RangeRequest::Full => (StatusCode::OK, 0, len),
        RangeRequest::Single { start, end } => {
            builder = builder.header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{len}"));
            (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
        }
        RangeRequest::Unsatisfiable => {
            let mut resp = http_base::error(StatusCode::RANGE_NOT_SATISFIABLE);
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                resp.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return resp;
        }
    };
    let body = if head {
        http_base::empty()
    } else {
        match file_body(cfg, rel, rep, (start, count), ask.file_regions) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, path = %rel.display(), "cannot read file");
                return http_base::error(StatusCode::INTERNAL_SERVER_ERROR);
            }
        }
    };
    builder
        .status(status)
        .header(header::CONTENT_LENGTH, count)
        .body(body)
        .unwrap_or_else(|_| http_base::error(StatusCode::INTERNAL_SERVER_ERROR))
}

/// The first acceptable precompressed sibling that exists (`app.js.br`, …).
fn choose_precompressed(
    cfg: &StaticRoute,
    rel: &Path,
    accept: Option<&str>,
) -> Option<Representation> {
    if cfg.precompressed.is_empty() {
        return None;
    }
    negotiate::acceptable(accept, &cfg.precompressed)
        .into_iter()
        .find_map(|enc| {
            let mut name = rel.as_os_str().to_owned();
            name.push(enc.suffix());
            match open_source(cfg, Path::new(&name)) {
                Ok(Found::File(source, meta)) => Some(Representation {
                    source,
                    meta,
                    encoding: Some(enc),
                }),
                _ => None,
            }
        })
}

fn file_body(
    cfg: &StaticRoute,
    rel: &Path,
    rep: Representation,
    (start, count): (u64, u64),
    file_regions: Option<&Arc<FileRegions>>,
) -> std::io::Result<Body> {
    let len = rep.meta.size();
    let whole = match rep.source {
        Source::Cached(bytes) => bytes,
        Source::File(file) if len <= READ_WHOLE_MAX => {
            let mut buf = Vec::with_capacity(len as usize);
            file.take(len).read_to_end(&mut buf)?;
            if (buf.len() as u64) < len {
                return Err(std::io::Error::other("file shrank while being read"));
            }
            let bytes = Bytes::from(buf);
            if len <= cache::MAX_ENTRY {
                // The name of the sibling actually read, for precompressed representations.
                let key = match rep.encoding {
                    None => rel.to_path_buf(),
                    Some(enc) => {
                        let mut name = rel.as_os_str().to_owned();
                        name.push(enc.suffix());
                        PathBuf::from(name)
                    }
                };
                cfg.cache.insert(&key, &rep.meta, bytes.clone());
            }
            bytes
        }
        Source::File(file) if count >= SENDFILE_MIN => match file_regions {
            Some(regions) => match regions.map(file, start, count) {
                Ok(mapped) => return Ok(http_base::boxed_full(mapped)),
                Err((e, file)) => {
                    tracing::debug!(error = %e, "cannot map a file for sendfile: reading it");
                    return streamed(file, start, count);
                }
            },
            None => return streamed(file, start, count),
        },
        Source::File(file) => return streamed(file, start, count),
    };
    let end = usize::try_from(start + count)
        .unwrap_or(usize::MAX)
        .min(whole.len());
    let begin = usize::try_from(start).unwrap_or(usize::MAX).min(end);
    Ok(http_base::full(whole.slice(begin..end)))
}

/// A large file read a chunk at a time (TLS, HTTP/2).
fn streamed(mut file: File, start: u64, count: u64) -> std::io::Result<Body> {
    if start > 0 {
        file.seek(SeekFrom::Start(start))?;
    }
    Ok(FileBody::new(file, count).boxed())
}

fn compressed_body(source: Source, enc: Encoding) -> Body {
    match source {
        Source::File(file) => {
            let reader =
                tokio::io::BufReader::with_capacity(64 * 1024, tokio::fs::File::from_std(file));
            compressor(reader, enc)
        }
        Source::Cached(bytes) => compressor(std::io::Cursor::new(bytes), enc),
    }
}

fn compressor<R>(reader: R, enc: Encoding) -> Body
where
    R: tokio::io::AsyncBufRead + Unpin + Send + Sync + 'static,
{
    use async_compression::tokio::bufread::{BrotliEncoder, GzipEncoder, ZstdEncoder};
    match enc {
        Encoding::Gzip => ReaderBody::new(GzipEncoder::new(reader)).boxed(),
        Encoding::Brotli => ReaderBody::new(BrotliEncoder::with_quality(
            reader,
            async_compression::Level::Fastest,
        ))
        .boxed(),
        Encoding::Zstd => ReaderBody::new(ZstdEncoder::new(reader)).boxed(),
    }
}
