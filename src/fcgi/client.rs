//! `wsgi-fcgi request`: one FastCGI request from the command line, built on
//! the fastcgi-client crate, for health probes (systemd, Docker, Kubernetes)
//! and for operators — what `cgi-fcgi -bind -connect` is used for today.

use std::io::Write;

use anyhow::Context;
use fastcgi_client::{Client, Params, Request};

use crate::fcgi::cli::RequestArgs;

use crate::fcgi::worker::listener::Bind;

/// One request to send.
#[derive(Clone, Debug)]
pub struct Probe {
    /// Where the responder listens.
    pub address: Bind,
    /// Request path (`PATH_INFO`), may carry `?query`.
    pub path: String,
    /// Request method.
    pub method: String,
    /// HTTP headers as `(name, value)`.
    pub headers: Vec<(String, String)>,
    /// Request body.
    pub body: Vec<u8>,
}

/// What came back.
#[derive(Clone, Debug)]
pub struct ProbeResponse {
    /// The HTTP status from the `Status:` header (200 when absent).
    pub status: u16,
    /// FCGI_STDOUT: the CGI response (headers and body).
    pub stdout: Vec<u8>,
    /// FCGI_STDERR.
    pub stderr: Vec<u8>,
}

/// A failed probe.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// Connecting failed.
    #[error("cannot connect to {0}: {1}")]
    Connect(String, std::io::Error),
    /// The FastCGI exchange failed.
    #[error("FastCGI request failed: {0}")]
    Protocol(String),
}

/// The status of a CGI response (`Status:` header; 302 for a bare
/// `Location:`; otherwise 200).
pub fn cgi_status(stdout: &[u8]) -> u16 {
    let end = stdout
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(stdout.len());
    let head = String::from_utf8_lossy(&stdout[..end]);
    let mut location = false;
    for line in head.lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if name.eq_ignore_ascii_case("status") {
            return value
                .trim()
                .get(..3)
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
        }
        location |= name.eq_ignore_ascii_case("location");
    }
    if location { 302 } else { 200 }
}

/// Send the request and collect the response.
pub async fn send(probe: &Probe) -> Result<ProbeResponse, ProbeError> {
    let (path, query) = probe.path.split_once('?').unwrap_or((&probe.path, ""));
    let mut params = Params::default()
        .request_method(probe.method.clone())
        .script_name("")
        .script_filename("")
        .request_uri(probe.path.clone())
        .document_uri(path.to_string())
        .query_string(query.to_string())
        .server_name("localhost")
        .custom("PATH_INFO", path.to_string());
    if !probe.body.is_empty() {
        params = params.content_length(probe.body.len());
    }
    for (name, value) in &probe.headers {
        let key = name.to_ascii_uppercase().replace('-', "_");
        params = match key.as_str() {
            "CONTENT_TYPE" => params.content_type(value.clone()),
            "CONTENT_LENGTH" => params,
            _ => params.custom(format!("HTTP_{key}"), value.clone()),
        };
    }
    let request = Request::new(params, &probe.body[..]);
    let name = match &probe.address {
        Bind::Unix(p) => format!("unix:{}", p.display()),
        Bind::Tcp(a) => a.clone(),
    };
    let response = match &probe.address {
        Bind::Unix(path) => {
            let stream = tokio::net::UnixStream::connect(path)
                .await
                .map_err(|e| ProbeError::Connect(name, e))?;
            // Buffered: the request leaves in one write (the crate writes
            // each record header and body on its own, and a second empty
            // STDIN after the first, which could meet a closed socket).
            Client::new_tokio(tokio::io::BufStream::new(stream))
                .execute_once(request)
                .await
        }
        Bind::Tcp(addr) => {
            let stream = tokio::net::TcpStream::connect(addr)
                .await
                .map_err(|e| ProbeError::Connect(name, e))?;
            Client::new_tokio(tokio::io::BufStream::new(stream))
                .execute_once(request)
                .await
        }
    }
    .map_err(|e| ProbeError::Protocol(e.to_string()))?;
    let stdout = response.stdout.unwrap_or_default();
    Ok(ProbeResponse {
        status: cgi_status(&stdout),
        stdout,
        stderr: response.stderr.unwrap_or_default(),
    })
}

/// `wsgi-fcgi request`: send it, print the response; the exit status is 0
/// for a 2xx status, 1 for another, 2 when the request failed.
pub fn request(args: RequestArgs) -> anyhow::Result<i32> {
    let headers = args
        .headers
        .iter()
        .map(|h| {
            h.split_once(':')
                .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
                .with_context(|| format!("header {h:?} is not \"Name: value\""))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let body = match (&args.data, &args.data_file) {
        (Some(data), _) => data.clone().into_bytes(),
        (None, Some(file)) => {
            std::fs::read(file).with_context(|| format!("reading {}", file.display()))?
        }
        (None, None) => Vec::new(),
    };
    let probe = Probe {
        address: Bind::parse(&args.address)?,
        path: args.path,
        method: args.method,
        headers,
        body,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match runtime.block_on(send(&probe)) {
        Ok(response) => {
            std::io::stdout().write_all(&response.stdout)?;
            std::io::stderr().write_all(&response.stderr)?;
            Ok(if (200..300).contains(&response.status) {
                0
            } else {
                1
            })
        }
        Err(err) => {
            eprintln!("wsgi-fcgi request: {err}");
            Ok(2)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_from_cgi_headers() {
        assert_eq!(
            cgi_status(b"Status: 404 Not Found\r\nX: y\r\n\r\nbody"),
            404
        );
        assert_eq!(
            cgi_status(b"Content-Type: text/plain\r\n\r\nStatus: 500"),
            200
        );
        assert_eq!(cgi_status(b"Location: /x\r\n\r\n"), 302);
        assert_eq!(cgi_status(b"status:  201 Created\r\n\r\n"), 201);
    }
}
