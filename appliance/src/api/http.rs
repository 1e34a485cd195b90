//! The operator API's HTTP/1.1 server: small, blocking, and bounded in
//! everything a client controls.
//!
//! Each connection gets a thread of its own (at most [`MAX_CONNECTIONS`] at
//! once; beyond, `503`), carries one request (`Connection: close`), and
//! must send it whole within [`IO_TIMEOUT`] of connecting; the answer gets
//! as long again. The request line and headers take at most [`MAX_HEAD`]
//! bytes (beyond, `431`), the body at most [`MAX_BODY`] (beyond, `413`; what
//! the client still sends is read and dropped until the deadline, so that it
//! sees the answer), and a body needs a `Content-Length` (`411`). Headers are
//! parsed by `httparse`. A slow request, a reload that waits for the workers
//! say, holds up its own connection only.

use std::{
    io::{self, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use tracing::debug;

/// Bytes of request line and headers a request may take.
pub const MAX_HEAD: usize = 16 * 1024;
/// Headers a request may have.
const MAX_HEADERS: usize = 64;
/// Bytes of body a request may carry: a config file, at most.
pub const MAX_BODY: usize = 16 << 20;
/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 16;
/// How long a client may take to send its whole request, and again to read
/// the answer.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the accepting thread rests after `accept` fails (out of file
/// descriptors, say), rather than spinning on the error.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// A request, read whole.
#[derive(Debug)]
pub struct Request {
    pub method: String,
    /// The path, without the query.
    pub path: String,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

/// An answer.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Response {
    pub fn new(status: u16, content_type: &'static str, body: String) -> Self {
        Self {
            status,
            content_type,
            body,
        }
    }

    /// A JSON error: `{"error": message}`.
    pub fn error(status: u16, message: &str) -> Self {
        let body = serde_json::json!({ "error": message }).to_string();
        Self::new(status, "application/json", body)
    }
}

type Handler = dyn Fn(&Request) -> Response + Send + Sync;

/// A listening server; stopped (and its accepting thread joined) on drop.
pub struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("addr", &self.addr).finish()
    }
}

impl Server {
    /// Listens on `addr` and answers each request with `handler`.
    pub fn start(
        addr: SocketAddr,
        handler: impl Fn(&Request) -> Response + Send + Sync + 'static,
    ) -> io::Result<Self> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let handler: Arc<Handler> = Arc::new(handler);
        let stopping = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("rialto-api".into())
            .spawn(move || accept(&listener, &stopping, &handler))?;
        Ok(Self {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wakes the accepting thread, which then sees `stop`.
        let mut wake = self.addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(if wake.is_ipv4() {
                std::net::Ipv4Addr::LOCALHOST.into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            });
        }
        let _ = TcpStream::connect_timeout(&wake, Duration::from_secs(1));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn accept(listener: &TcpListener, stop: &AtomicBool, handler: &Arc<Handler>) {
    let busy = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        if stop.load(Ordering::Acquire) {
            return;
        }
        let mut stream = match stream {
            Ok(stream) => stream,
            Err(e) => {
                debug!("API accept failed: {e}");
                std::thread::sleep(ACCEPT_BACKOFF);
                continue;
            }
        };
        if busy.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
            busy.fetch_sub(1, Ordering::AcqRel);
            let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
            let _ = respond(&mut stream, &Response::error(503, "too many connections"));
            continue;
        }
        let (handler, done) = (Arc::clone(handler), Arc::clone(&busy));
        let spawned = std::thread::Builder::new()
            .name("rialto-api-conn".into())
            .spawn(move || {
                serve(stream, &*handler);
                done.fetch_sub(1, Ordering::AcqRel);
            });
        if let Err(e) = spawned {
            // The closure, and the stream in it, are gone: the slot is freed
            // here, and the client sees its connection closed.
            busy.fetch_sub(1, Ordering::AcqRel);
            debug!("cannot serve an API connection: {e}");
        }
    }
}

/// Reads one request, answers it, closes.
fn serve(stream: TcpStream, handler: &Handler) {
    let mut request = Deadline::new(&stream, IO_TIMEOUT);
    let (response, refused) = match read(&mut request) {
        Ok(request) => (handler(&request), false),
        Err(refused) => (refused, true),
    };
    let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
    if let Err(e) = respond(&mut &stream, &response) {
        debug!("API response not sent: {e}");
    }
    let _ = stream.shutdown(Shutdown::Write);
    if refused {
        // What the client still sends (a body too large, say) is read and
        // dropped until the request's deadline, so that it sees the answer
        // rather than a reset.
        let _ = io::copy(&mut request, &mut io::sink());
    }
}

/// A stream read against one deadline for the whole request: a client that
/// sends a byte every few seconds is cut off all the same.
struct Deadline<'a> {
    stream: &'a TcpStream,
    until: Instant,
}

impl<'a> Deadline<'a> {
    fn new(stream: &'a TcpStream, within: Duration) -> Self {
        Self {
            stream,
            until: Instant::now() + within,
        }
    }
}

impl Read for Deadline<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "deadline passed"));
        }
        self.stream.set_read_timeout(Some(left))?;
        self.stream.read(buf)
    }
}

/// The request on `stream`, or the answer that refuses it.
fn read(stream: &mut Deadline<'_>) -> Result<Request, Response> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let (head_len, method, path, content_type, length) = loop {
        let n = match stream.read(&mut chunk) {
            Ok(0) => return Err(Response::error(400, "the request ended early")),
            Ok(n) => n,
            Err(e) => return Err(Response::error(408, &format!("request not read: {e}"))),
        };
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&buf) {
            Ok(httparse::Status::Complete(head_len)) => {
                let header = |name: &str| {
                    request
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(name))
                        .map(|h| String::from_utf8_lossy(h.value).trim().to_owned())
                };
                if header("transfer-encoding").is_some() {
                    return Err(Response::error(411, "send the body with a Content-Length"));
                }
                let length = match header("content-length").map(|l| l.parse::<usize>()) {
                    None => 0,
                    Some(Ok(length)) => length,
                    Some(Err(_)) => return Err(Response::error(400, "bad Content-Length")),
                };
                let path = request.path.unwrap_or("/");
                let path = path.split('?').next().unwrap_or(path).to_owned();
                let method = request.method.unwrap_or("").to_owned();
                break (head_len, method, path, header("content-type"), length);
            }
            Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
                return Err(Response::error(431, "request headers too large"));
            }
            Ok(httparse::Status::Partial) => {}
            Err(httparse::Error::TooManyHeaders) => {
                return Err(Response::error(431, "too many request headers"));
            }
            Err(e) => return Err(Response::error(400, &format!("not HTTP: {e}"))),
        }
    };
    if head_len > MAX_HEAD {
        return Err(Response::error(431, "request headers too large"));
    }
    if length > MAX_BODY {
        return Err(Response::error(
            413,
            &format!("the body may take {MAX_BODY} bytes at most"),
        ));
    }
    let mut body = buf.split_off(head_len);
    if body.len() > length {
        return Err(Response::error(400, "more body than its Content-Length"));
    }
    // The buffer grows with what arrives, not with what the client declared.
    let missing = length - body.len();
    if let Err(e) = stream.take(missing as u64).read_to_end(&mut body) {
        return Err(Response::error(408, &format!("body not read: {e}")));
    }
    if body.len() != length {
        return Err(Response::error(400, "the body ended early"));
    }
    Ok(Request {
        method,
        path,
        content_type,
        body,
    })
}

fn respond(stream: &mut impl Write, r: &Response) -> io::Result<()> {
    let reason = match r.status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Content",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    };
    write!(
        stream,
        "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        r.status,
        r.content_type,
        r.body.len()
    )?;
    stream.write_all(r.body.as_bytes())?;
    stream.flush()
}
