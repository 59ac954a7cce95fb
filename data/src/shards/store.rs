//! Where shards are read from: a local directory, or an `http://` URL read with range
//! requests (HTTP/1.1, one connection a request, bounded in time and size).
use crate::error::DataError;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Seconds to connect, and between two reads of a response.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest response header.
const MAX_HEADER: usize = 64 << 10;

/// The root of a packed dataset.
#[derive(Debug, Clone)]
pub enum Store {
    /// A local directory.
    Local(PathBuf),
    /// An HTTP server: host, port and the URL's path (without a trailing `/`).
    Http {
        /// Host name or address.
        host: String,
        /// Port.
        port: u16,
        /// Path prefix.
        path: String,
    },
}

/// A failure to read, and where.
fn failed(at: &str, message: impl Into<String>) -> DataError {
    DataError::format(Path::new(at), message)
}

impl Store {
    /// `root`: a directory, or `http://host[:port]/path`.
    pub fn parse(root: &Path) -> Result<Self, DataError> {
        let text = root.to_string_lossy();
        if let Some(rest) = text.strip_prefix("http://") {
            let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
            let (host, port) = match authority.rsplit_once(':') {
                Some((h, p)) => (
                    h,
                    p.parse::<u16>()
                        .map_err(|_| failed(&text, format!("`{p}` is not a port")))?,
                ),
                None => (authority, 80),
            };
            if host.is_empty() {
                return Err(failed(&text, "the URL names no host"));
            }
            return Ok(Store::Http {
                host: host.to_string(),
                port,
                path: format!("/{}", path.trim_end_matches('/')).replace("//", "/"),
            });
        }
        if text.contains("://") {
            return Err(failed(
                &text,
                "only local directories and http:// URLs are read (for https or object stores, serve the shards over http or copy them)",
            ));
        }
        Ok(Store::Local(root.to_path_buf()))
    }

    /// The path or URL of `relative`, for messages.
    pub fn name(&self, relative: &str) -> String {
        match self {
            Store::Local(dir) => dir.join(relative).display().to_string(),
            Store::Http { host, port, path } => {
                format!(
                    "http://{host}:{port}{}/{relative}",
                    path.trim_end_matches('/')
                )
            }
        }
    }

    /// The whole of `relative`, at most `cap` bytes.
    pub fn read_all(&self, relative: &str, cap: u64) -> Result<Vec<u8>, DataError> {
        let name = self.name(relative);
        match self {
            Store::Local(dir) => {
                let path = dir.join(relative);
                let input = sat_input::open(&path, sat_input::Kind::Index)?;
                let (size, file) = (input.size(), input.into_file());
                if size > cap {
                    return Err(failed(
                        &name,
                        format!("{size} bytes, more than the {cap} allowed for this file"),
                    ));
                }
                let mut bytes = Vec::with_capacity(size as usize);
                file.take(cap + 1)
                    .read_to_end(&mut bytes)
                    .map_err(|e| DataError::io(&path, e))?;
                Ok(bytes)
            }
            Store::Http { .. } => self
                .http_get(relative, None, cap)
                .map_err(|m| failed(&name, m)),
        }
    }

    /// `len` bytes of `relative` from `offset`; fewer bytes than that is an error
    /// (a truncated shard, or a connection cut half-way).
    pub fn read_range(&self, relative: &str, offset: u64, len: u64) -> Result<Vec<u8>, String> {
        match self {
            Store::Local(dir) => {
                let path = dir.join(relative);
                let input =
                    sat_input::open(&path, sat_input::Kind::Shard).map_err(|e| e.to_string())?;
                let (size, file) = (input.size(), input.into_file());
                if offset + len > size {
                    return Err(format!(
                        "truncated: the sample's bytes end at {} but the file has {size}",
                        offset + len
                    ));
                }
                let mut bytes = vec![0u8; len as usize];
                file.read_exact_at(&mut bytes, offset)
                    .map_err(|e| format!("reading {len} bytes at {offset}: {e}"))?;
                Ok(bytes)
            }
            Store::Http { .. } => self.http_get(relative, Some((offset, len)), len),
        }
    }

    /// The size of a local file (`None` over HTTP, where the server vouches for it).
    pub fn size(&self, relative: &str) -> Result<Option<u64>, DataError> {
        match self {
            Store::Local(dir) => {
                let path = dir.join(relative);
                Ok(Some(sat_input::open(&path, sat_input::Kind::Shard)?.size()))
            }
            Store::Http { .. } => Ok(None),
        }
    }

    /// A GET of `relative` (a `Range` of it when `range` is given), its body at most
    /// `cap` bytes.
    fn http_get(
        &self,
        relative: &str,
        range: Option<(u64, u64)>,
        cap: u64,
    ) -> Result<Vec<u8>, String> {
        let Store::Http { host, port, path } = self else {
            unreachable!("http_get on a local store")
        };
        let addr = (host.as_str(), *port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {host}: {e}"))?
            .next()
            .ok_or_else(|| format!("{host} has no address"))?;
        let mut stream = TcpStream::connect_timeout(&addr, HTTP_TIMEOUT)
            .map_err(|e| format!("cannot connect: {e}"))?;
        stream
            .set_read_timeout(Some(HTTP_TIMEOUT))
            .map_err(|e| e.to_string())?;
        stream
            .set_write_timeout(Some(HTTP_TIMEOUT))
            .map_err(|e| e.to_string())?;
        let target = format!("{}/{relative}", path.trim_end_matches('/'));
        let range_line = match range {
            Some((offset, len)) if len > 0 => {
                format!("Range: bytes={offset}-{}\r\n", offset + len - 1)
            }
            _ => String::new(),
        };
        write!(
            stream,
            "GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\n{range_line}User-Agent: sat\r\nConnection: close\r\n\r\n"
        )
        .map_err(|e| format!("sending the request: {e}"))?;
        let (status, length, mut body) = read_head(&mut stream)?;
        let whole_file = status == 200 && range.is_some();
        if status != 200 && status != 206 {
            return Err(format!("the server answered HTTP {status}"));
        }
        let expected = match (length, range) {
            (Some(n), _) => n,
            (None, Some((_, len))) if !whole_file => len,
            (None, _) => cap,
        };
        if expected > cap && !whole_file {
            return Err(format!(
                "{expected} bytes, more than the {cap} allowed for this file"
            ));
        }
        let want = expected.min(if whole_file { u64::MAX } else { cap });
        (&mut stream)
            .take(want.saturating_sub(body.len() as u64))
            .read_to_end(&mut body)
            .map_err(|e| {
                format!(
                    "the connection failed after {} of {want} bytes: {e}",
                    body.len()
                )
            })?;
        if length.is_some() && (body.len() as u64) < want {
            return Err(format!(
                "the connection closed after {} of {want} bytes",
                body.len()
            ));
        }
        match range {
            Some((offset, len)) if whole_file => body
                .get(offset as usize..(offset + len) as usize)
                .map(<[u8]>::to_vec)
                .ok_or_else(|| {
                    format!(
                        "truncated: the sample's bytes end at {} but the file has {}",
                        offset + len,
                        body.len()
                    )
                }),
            _ => Ok(body),
        }
    }
}

/// The status, the `Content-Length` and what of the body came with the header.
fn read_head(stream: &mut TcpStream) -> Result<(u16, Option<u64>, Vec<u8>), String> {
    let mut head = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        if head.len() > MAX_HEADER {
            return Err("the response header is too long".into());
        }
        let n = stream
            .read(&mut chunk)
            .map_err(|e| format!("reading the response: {e}"))?;
        if n == 0 {
            return Err("the server closed the connection before answering".into());
        }
        head.extend_from_slice(&chunk[..n]);
    };
    let text = String::from_utf8_lossy(&head[..end]).into_owned();
    let body = head[end + 4..].to_vec();
    let mut lines = text.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or("not an HTTP response")?;
    let mut length = None;
    for line in lines {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let key = key.trim().to_ascii_lowercase();
        if key == "content-length" {
            length = Some(
                value
                    .trim()
                    .parse::<u64>()
                    .map_err(|_| "bad Content-Length")?,
            );
        } else if key == "transfer-encoding" && !value.trim().eq_ignore_ascii_case("identity") {
            return Err(format!(
                "the server sent `Transfer-Encoding: {}`, which sat does not read",
                value.trim()
            ));
        }
    }
    Ok((status, length, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roots_parse_into_directories_and_urls() {
        match Store::parse(Path::new("http://127.0.0.1:8123/data/x/")).unwrap() {
            Store::Http { host, port, path } => {
                assert_eq!(
                    (host.as_str(), port, path.as_str()),
                    ("127.0.0.1", 8123, "/data/x")
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            Store::parse(Path::new("shards/x")).unwrap(),
            Store::Local(_)
        ));
        let e = Store::parse(Path::new("s3://bucket/x"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("only local directories and http://"), "{e}");
        assert!(Store::parse(Path::new("http://h:x/")).is_err());
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("p.tar");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let store = Store::Local(dir.path().to_path_buf());
        let e = store.read_range("p.tar", 0, 10).unwrap_err();
        assert!(e.contains("not a regular file"), "{e}");
    }
}
