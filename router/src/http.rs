//! The router's small HTTP/1.1 endpoint: `/metrics`, `/healthz`, `/readyz`.
//!
//! Served with hyper's HTTP/1 server on the router's one thread: [`serve`]
//! accepts connections and runs each in its own `spawn_local` task, so the
//! handlers may use `Rc`/`RefCell` state ([`HttpEndpoints`] holds two
//! closures over it). It must run inside a `LocalSet` on a runtime with
//! time enabled.
//!
//! | request | answer |
//! |---|---|
//! | `GET /metrics` | 200, the exposition (content type [`metrics::CONTENT_TYPE`]) |
//! | `GET /healthz` | 200 `ok`: the process is alive and its runtime answers |
//! | `GET /readyz` | 200 `ready`, or 503 `not ready: <reason>` |
//! | another path | 404 |
//! | another method on these paths | 405 with `Allow: GET, HEAD` |
//!
//! `HEAD` answers like `GET` without the body. Connections are kept alive.
//!
//! Nothing a client does holds resources for long ([`HttpLimits`]): a
//! request head must arrive within `header_read_timeout` (which also closes
//! a connection idle between requests) and fit in 16 KiB; a connection is
//! shut down gracefully at `max_connection_age` (then cut after
//! `shutdown_grace`, e.g. a client that never reads its response); past
//! `max_connections` open connections a new one is closed at once.
//! Dropping (aborting) the [`serve`] future closes every connection.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::metrics;

/// What the endpoint reports, as closures over the router's state (called
/// on the router's thread, once per request).
#[derive(Clone)]
pub struct HttpEndpoints {
    /// Renders the /metrics body.
    pub metrics: Rc<dyn Fn() -> String>,
    /// Ready: configured listeners bound and links attempted. Returns Err(reason) when not ready.
    pub ready: Rc<dyn Fn() -> Result<(), String>>,
}

/// Bounds on what clients of the endpoint can hold.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// Time allowed for a request head to arrive, counted from when the
    /// server starts waiting for it (so it also bounds idle keep-alive).
    pub header_read_timeout: Duration,
    /// A connection older than this is shut down gracefully: the request in
    /// progress, if any, is answered, then it is closed.
    pub max_connection_age: Duration,
    /// Time a connection gets to finish after `max_connection_age` before
    /// it is cut.
    pub shutdown_grace: Duration,
    /// Connections open at once; a connection accepted beyond it is closed
    /// without an answer.
    pub max_connections: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            max_connection_age: Duration::from_secs(300),
            shutdown_grace: Duration::from_secs(10),
            max_connections: 64,
        }
    }
}

/// Largest request head (and read buffer) per connection.
const MAX_REQUEST_BUFFER_BYTES: usize = 16 * 1024;

/// Pause after an accept error that is not about one connection (e.g. out
/// of file descriptors), so the loop does not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// The `Allow` header of a 405.
const ALLOWED_METHODS: &str = "GET, HEAD";

/// Serves the endpoint on `listener` with [`HttpLimits::default`] until the
/// future is dropped (it never completes). Must run inside a `LocalSet`.
pub async fn serve(listener: TcpListener, endpoints: HttpEndpoints) {
    serve_with_limits(listener, endpoints, HttpLimits::default()).await
}

/// [`serve`] with explicit limits.
pub async fn serve_with_limits(
    listener: TcpListener,
    endpoints: HttpEndpoints,
    limits: HttpLimits,
) {
    // Owning the connection tasks here means dropping this future aborts
    // them all; finished ones are reaped as they end.
    let mut connections: JoinSet<()> = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    if connections.len() >= limits.max_connections {
                        tracing::debug!(
                            %peer,
                            limit = limits.max_connections,
                            "http: connection refused, too many open"
                        );
                        drop(stream);
                        continue;
                    }
                    connections.spawn_local(serve_connection(
                        stream,
                        peer,
                        endpoints.clone(),
                        limits.clone(),
                    ));
                }
                Err(error) => {
                    tracing::warn!(%error, "http: accept failed");
                    if !is_per_connection_error(&error) {
                        tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    }
                }
            },
            Some(finished) = connections.join_next(), if !connections.is_empty() => {
                if let Err(error) = finished {
                    if error.is_panic() {
                        tracing::error!(%error, "http: connection task panicked");
                    }
                }
            }
        }
    }
}

/// True for accept errors that concern only the connection being accepted.
fn is_per_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}

/// Runs one HTTP/1.1 connection to its end, within `limits`.
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    endpoints: HttpEndpoints,
    limits: HttpLimits,
) {
    // Responses are small and written whole: no reason to wait for ACKs.
    let _ = stream.set_nodelay(true);
    let service = service_fn(move |request: Request<Incoming>| {
        let response = respond(&endpoints, request.method(), request.uri().path());
        std::future::ready(Ok::<_, Infallible>(response))
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_REQUEST_BUFFER_BYTES);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    let mut connection = std::pin::pin!(connection);

    let result = match tokio::time::timeout(limits.max_connection_age, connection.as_mut()).await {
        Ok(result) => result,
        Err(_) => {
            // Closes at once if idle, else after the response in progress.
            connection.as_mut().graceful_shutdown();
            match tokio::time::timeout(limits.shutdown_grace, connection.as_mut()).await {
                Ok(result) => result,
                Err(_) => {
                    tracing::debug!(%peer, "http: connection cut, still busy past its maximum age");
                    return;
                }
            }
        }
    };
    if let Err(error) = result {
        if error.is_timeout() {
            tracing::debug!(%peer, "http: connection closed, no request head in time");
        } else {
            tracing::debug!(%peer, %error, "http: connection ended with an error");
        }
    }
}

/// The endpoints a request can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    Metrics,
    Healthz,
    Readyz,
}

/// The answer to `method path` (the path without its query).
fn respond(endpoints: &HttpEndpoints, method: &Method, path: &str) -> Response<Full<Bytes>> {
    let route = match path {
        "/metrics" => Route::Metrics,
        "/healthz" => Route::Healthz,
        "/readyz" => Route::Readyz,
        _ => return text_response(StatusCode::NOT_FOUND, "not found\n".to_owned()),
    };
    if method != Method::GET && method != Method::HEAD {
        let mut response = text_response(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed\n".to_owned(),
        );
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(ALLOWED_METHODS));
        return response;
    }
    match route {
        Route::Metrics => {
            let mut response = Response::new(Full::new(Bytes::from((endpoints.metrics)())));
            response.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(metrics::CONTENT_TYPE),
            );
            response
        }
        Route::Healthz => text_response(StatusCode::OK, "ok\n".to_owned()),
        Route::Readyz => match (endpoints.ready)() {
            Ok(()) => text_response(StatusCode::OK, "ready\n".to_owned()),
            Err(reason) => text_response(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {reason}\n"),
            ),
        },
    }
}

/// A `text/plain` response with `status` and `body`.
fn text_response(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::future::Future;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Bound on every wait of these tests.
    const TEST_TIMEOUT: Duration = Duration::from_secs(5);

    /// Runs `test` on a current-thread runtime inside a `LocalSet`, as the
    /// router does.
    fn run_local<F: Future>(test: F) -> F::Output {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        tokio::task::LocalSet::new().block_on(&runtime, test)
    }

    /// Endpoints whose readiness is whatever `not_ready` holds (`None`:
    /// ready), and whose metrics are one fixed gauge.
    fn endpoints(not_ready: Rc<RefCell<Option<String>>>) -> HttpEndpoints {
        HttpEndpoints {
            metrics: Rc::new(|| {
                let mut out = metrics::Exposition::new();
                out.gauge("tether_test_up", "Test gauge.", &[("a", "b")], 1.0);
                out.render()
            }),
            ready: Rc::new(move || match &*not_ready.borrow() {
                None => Ok(()),
                Some(reason) => Err(reason.clone()),
            }),
        }
    }

    /// Starts the endpoint on 127.0.0.1 (any port) as a local task.
    async fn start(
        endpoints: HttpEndpoints,
        limits: HttpLimits,
    ) -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let task = tokio::task::spawn_local(serve_with_limits(listener, endpoints, limits));
        (addr, task)
    }

    /// A parsed response.
    #[derive(Debug)]
    struct Answer {
        status: u16,
        /// Header lines, names lowercased.
        headers: Vec<(String, String)>,
        body: String,
    }

    impl Answer {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        }
    }

    /// Parses one whole response (the connection closed after it).
    fn parse_answer(raw: &[u8]) -> Answer {
        let text = String::from_utf8_lossy(raw);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("no end of head in {text:?}"));
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status = status_line
            .strip_prefix("HTTP/1.1 ")
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        let headers = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        Answer {
            status,
            headers,
            body: body.to_owned(),
        }
    }

    /// Reads until the server closes the connection (bounded).
    async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
        let mut raw = Vec::new();
        tokio::time::timeout(TEST_TIMEOUT, stream.read_to_end(&mut raw))
            .await
            .expect("server closed the connection in time")
            .expect("read response");
        raw
    }

    /// Sends `method path` with `Connection: close` and returns the answer.
    async fn request(addr: SocketAddr, method: &str, path: &str) -> Answer {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let request =
            format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("write");
        parse_answer(&read_to_close(&mut stream).await)
    }

    /// Sends `GET /healthz` on a kept-alive connection and reads exactly
    /// its answer (by Content-Length).
    async fn keep_alive_healthz(stream: &mut TcpStream) {
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
            .await
            .expect("write");
        let expected = b"ok\n";
        let mut raw = Vec::new();
        let mut chunk = [0u8; 1024];
        while !(raw.ends_with(b"\r\n\r\nok\n")) {
            let n = tokio::time::timeout(TEST_TIMEOUT, stream.read(&mut chunk))
                .await
                .expect("answer in time")
                .expect("read");
            assert!(
                n > 0,
                "closed early after {:?}",
                String::from_utf8_lossy(&raw)
            );
            raw.extend_from_slice(&chunk[..n]);
        }
        let answer = parse_answer(&raw);
        assert_eq!(answer.status, 200);
        assert_eq!(answer.body.as_bytes(), expected);
    }

    /// True if the server closes `stream` (EOF or reset) within `within`.
    async fn closed_by_server(stream: &mut TcpStream, within: Duration) -> bool {
        let mut chunk = [0u8; 1024];
        loop {
            match tokio::time::timeout(within, stream.read(&mut chunk)).await {
                Err(_) => return false,
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                Ok(Ok(_)) => continue, // e.g. a 408 before the close
            }
        }
    }

    #[test]
    fn http_metrics_answers_200_with_the_exposition() {
        run_local(async {
            let (addr, _server) = start(endpoints(Rc::default()), HttpLimits::default()).await;
            let answer = request(addr, "GET", "/metrics").await;
            assert_eq!(answer.status, 200);
            assert_eq!(
                answer.header("content-type"),
                Some("text/plain; version=0.0.4; charset=utf-8")
            );
            assert_eq!(
                answer.body,
                "# HELP tether_test_up Test gauge.\n# TYPE tether_test_up gauge\n\
                 tether_test_up{a=\"b\"} 1\n"
            );
            // A query string does not change the route.
            assert_eq!(request(addr, "GET", "/metrics?x=1").await.status, 200);
        });
    }

    #[test]
    fn http_healthz_answers_ok() {
        run_local(async {
            let (addr, _server) = start(endpoints(Rc::default()), HttpLimits::default()).await;
            let answer = request(addr, "GET", "/healthz").await;
            assert_eq!(answer.status, 200);
            assert_eq!(answer.body, "ok\n");
            assert_eq!(
                answer.header("content-type"),
                Some("text/plain; charset=utf-8")
            );
        });
    }

    #[test]
    fn http_readyz_flips_from_503_to_200() {
        run_local(async {
            let not_ready = Rc::new(RefCell::new(Some("links not attempted yet".to_owned())));
            let (addr, _server) = start(endpoints(not_ready.clone()), HttpLimits::default()).await;
            let answer = request(addr, "GET", "/readyz").await;
            assert_eq!(answer.status, 503);
            assert_eq!(answer.body, "not ready: links not attempted yet\n");
            *not_ready.borrow_mut() = None;
            let answer = request(addr, "GET", "/readyz").await;
            assert_eq!(answer.status, 200);
            assert_eq!(answer.body, "ready\n");
        });
    }

    #[test]
    fn http_unknown_path_is_404() {
        run_local(async {
            let (addr, _server) = start(endpoints(Rc::default()), HttpLimits::default()).await;
            for path in ["/", "/metricsx", "/metrics/", "/nope"] {
                assert_eq!(request(addr, "GET", path).await.status, 404, "{path}");
            }
            assert_eq!(request(addr, "POST", "/nope").await.status, 404);
        });
    }

    #[test]
    fn http_other_methods_are_405_with_allow() {
        run_local(async {
            let (addr, _server) = start(endpoints(Rc::default()), HttpLimits::default()).await;
            for (method, path) in [
                ("POST", "/metrics"),
                ("PUT", "/healthz"),
                ("DELETE", "/readyz"),
                ("OPTIONS", "/metrics"),
            ] {
                let answer = request(addr, method, path).await;
                assert_eq!(answer.status, 405, "{method} {path}");
                assert_eq!(answer.header("allow"), Some("GET, HEAD"), "{method} {path}");
            }
        });
    }

    #[test]
    fn http_head_answers_like_get_without_body() {
        run_local(async {
            let (addr, _server) = start(endpoints(Rc::default()), HttpLimits::default()).await;
            let get = request(addr, "GET", "/metrics").await;
            let head = request(addr, "HEAD", "/metrics").await;
            assert_eq!(head.status, 200);
            assert_eq!(head.body, "");
            assert_eq!(head.header("content-type"), get.header("content-type"));
            assert_eq!(
                head.header("content-length"),
                Some(get.body.len().to_string().as_str())
            );
            assert_eq!(request(addr, "HEAD", "/healthz").await.status, 200);
        });
    }

    #[test]
    fn http_keeps_connections_alive() {
        run_local(async {
            let (addr, _server) = start(endpoints(Rc::default()), HttpLimits::default()).await;
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            for _ in 0..3 {
                keep_alive_healthz(&mut stream).await;
            }
        });
    }

    #[test]
    fn http_closes_a_connection_without_a_request_head_in_time() {
        run_local(async {
            let limits = HttpLimits {
                header_read_timeout: Duration::from_millis(200),
                ..HttpLimits::default()
            };
            let (addr, _server) = start(endpoints(Rc::default()), limits).await;
            // Half a request head, then nothing.
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            stream
                .write_all(b"GET /metrics HTTP/1.1\r\nHost: te")
                .await
                .expect("write");
            assert!(closed_by_server(&mut stream, TEST_TIMEOUT).await);
            // Idle after a request: closed the same way.
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            keep_alive_healthz(&mut stream).await;
            assert!(closed_by_server(&mut stream, TEST_TIMEOUT).await);
            // The server still answers.
            assert_eq!(request(addr, "GET", "/healthz").await.status, 200);
        });
    }

    #[test]
    fn http_shuts_down_connections_past_their_maximum_age() {
        run_local(async {
            let limits = HttpLimits {
                max_connection_age: Duration::from_millis(300),
                ..HttpLimits::default()
            };
            let (addr, _server) = start(endpoints(Rc::default()), limits).await;
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            keep_alive_healthz(&mut stream).await;
            assert!(closed_by_server(&mut stream, TEST_TIMEOUT).await);
        });
    }

    #[test]
    fn http_closes_connections_beyond_the_limit() {
        run_local(async {
            let limits = HttpLimits {
                max_connections: 1,
                ..HttpLimits::default()
            };
            let (addr, _server) = start(endpoints(Rc::default()), limits).await;
            let mut first = TcpStream::connect(addr).await.expect("connect");
            keep_alive_healthz(&mut first).await; // accepted and open
            let mut second = TcpStream::connect(addr).await.expect("connect");
            assert!(closed_by_server(&mut second, TEST_TIMEOUT).await);
            drop(first);
            // Once the first connection's task has ended, there is room.
            let deadline = tokio::time::Instant::now() + TEST_TIMEOUT;
            loop {
                let mut stream = TcpStream::connect(addr).await.expect("connect");
                let sent = stream
                    .write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                    .await;
                let mut raw = Vec::new();
                if sent.is_ok() && stream.read_to_end(&mut raw).await.is_ok() && !raw.is_empty() {
                    assert_eq!(parse_answer(&raw).status, 200);
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "no room after close"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
    }

    #[test]
    fn http_dropping_serve_closes_its_connections() {
        run_local(async {
            let (addr, server) = start(endpoints(Rc::default()), HttpLimits::default()).await;
            let mut stream = TcpStream::connect(addr).await.expect("connect");
            keep_alive_healthz(&mut stream).await;
            server.abort();
            assert!(closed_by_server(&mut stream, TEST_TIMEOUT).await);
        });
    }
}
