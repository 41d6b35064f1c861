//! TCP adaptor: the socket side of a TCP flow.
//!
//! A *flow* is one client TCP connection carried through the router network
//! to one service connection. The router core owns the inter-router links and
//! the flow table; this crate owns what touches the flow's own socket:
//!
//! - [`FlowSocket::poll_read_into`] reads socket bytes straight into the
//!   link's outgoing frame buffer (after a reserved transfer header), so a
//!   byte from a client is copied once in user space before TLS;
//! - [`WriteQueue`] holds bytes received from the network that the socket
//!   could not take yet, bounded by the flow's credit window, and counts the
//!   deliveries fully written so credit can be returned;
//! - half-close ([`FlowSocket::shutdown_write`]) and abortive close
//!   ([`FlowSocket::reset`]) map flow ends onto TCP;
//! - [`bind_listener`] / [`connect_service`] set the socket options every
//!   flow socket needs (no Nagle delay, address reuse).

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::net::{Shutdown, SocketAddr};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use socket2::SockRef;
use tokio::io::Interest;
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// Most bytes one socket read puts into one transfer.
pub const MAX_READ_CHUNK: usize = 256 * 1024;

/// The socket of one flow end (the client's at the ingress router, the
/// service's at the egress router).
#[derive(Debug)]
pub struct FlowSocket {
    stream: TcpStream,
}

impl FlowSocket {
    pub fn new(stream: TcpStream) -> Self {
        // Latency matters more than packet count for request/response flows;
        // bulk flows write large chunks anyway.
        let _ = stream.set_nodelay(true);
        Self { stream }
    }

    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.stream.peer_addr().ok()
    }

    /// Waits until the socket is readable, then appends at most `max` bytes
    /// to `out`. `Ready(Ok(0))` is end of stream.
    pub fn poll_read_into(
        &self,
        cx: &mut Context<'_>,
        out: &mut BytesMut,
        max: usize,
    ) -> Poll<io::Result<usize>> {
        // Bounded: a spurious readiness clears itself on WouldBlock, and a
        // real one reads.
        for _ in 0..4 {
            ready!(self.stream.poll_read_ready(cx))?;
            out.reserve(max);
            let mut got = 0;
            let result = self.stream.try_io(Interest::READABLE, || {
                let spare = &mut out.spare_capacity_mut()[..max];
                let n = SockRef::from(&self.stream).recv(spare)?;
                got = n;
                if n > 0 && n < max {
                    // A short read drained the socket: report WouldBlock so
                    // tokio clears readiness now instead of after one more
                    // empty read() next time round.
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                Ok(n)
            });
            match result {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && got > 0 => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
            // SAFETY: recv() initialised the first `got` bytes of the spare
            // capacity.
            unsafe { out.set_len(out.len() + got) };
            return Poll::Ready(Ok(got));
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Writes as much of `queue` as the socket takes now, without waiting.
    /// Returns whether the queue is now empty.
    pub fn try_write_queue(&self, queue: &mut WriteQueue) -> io::Result<bool> {
        while !queue.is_empty() {
            let mut slices = [IoSlice::new(&[]); 16];
            let n = queue.fill_slices(&mut slices);
            match self.stream.try_write_vectored(&slices[..n]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(written) => queue.consume(written),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Writes `queue` until it is empty or the socket would block, and
    /// registers for writability in that case.
    pub fn poll_write_queue(
        &self,
        cx: &mut Context<'_>,
        queue: &mut WriteQueue,
    ) -> Poll<io::Result<()>> {
        for _ in 0..64 {
            if queue.is_empty() {
                return Poll::Ready(Ok(()));
            }
            ready!(self.stream.poll_write_ready(cx))?;
            if self.try_write_queue(queue)? {
                return Poll::Ready(Ok(()));
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Sends FIN: the peer reads end of stream, our read side stays open.
    pub fn shutdown_write(&self) {
        let _ = SockRef::from(&self.stream).shutdown(Shutdown::Write);
    }

    /// Makes the close abortive (RST instead of FIN), used when the far end
    /// of the flow was reset or the flow broke. The RST goes out when the
    /// socket is dropped; no shutdown here, which would send a FIN first.
    pub fn reset(&self) {
        let _ = SockRef::from(&self.stream).set_linger(Some(Duration::ZERO));
    }
}

/// Bytes received for a flow and not yet written to its socket. Each pushed
/// chunk is one delivery; [`WriteQueue::take_completed`] says how many were
/// fully written since last asked, which is the credit to return.
#[derive(Debug, Default)]
pub struct WriteQueue {
    chunks: VecDeque<Bytes>,
    bytes: usize,
    completed: u32,
    completed_bytes: usize,
}

impl WriteQueue {
    pub fn push(&mut self, chunk: Bytes) {
        if chunk.is_empty() {
            self.completed += 1;
            return;
        }
        self.bytes += chunk.len();
        self.chunks.push_back(chunk);
    }

    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Bytes waiting.
    pub fn len(&self) -> usize {
        self.bytes
    }

    /// Deliveries fully written since the last call, and their bytes.
    pub fn take_completed(&mut self) -> (u32, usize) {
        (
            std::mem::take(&mut self.completed),
            std::mem::take(&mut self.completed_bytes),
        )
    }

    fn fill_slices<'a>(&'a self, slices: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for (slot, chunk) in slices.iter_mut().zip(self.chunks.iter()) {
            *slot = IoSlice::new(chunk);
            n += 1;
        }
        n
    }

    fn consume(&mut self, mut written: usize) {
        self.bytes -= written.min(self.bytes);
        self.completed_bytes += written;
        while written > 0 {
            let Some(front) = self.chunks.front_mut() else {
                break;
            };
            if written >= front.len() {
                written -= front.len();
                self.chunks.pop_front();
                self.completed += 1;
            } else {
                front.advance(written);
                written = 0;
            }
        }
    }

    /// Drops everything (the flow is being torn down).
    pub fn clear(&mut self) {
        self.chunks.clear();
        self.bytes = 0;
    }
}

/// Binds a TCP listener for a `tcp_listener` with address reuse, so a
/// listener can be re-bound right after it was closed.
pub fn bind_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Opens a connection to a service for a `tcp_connector`, bounded by
/// `timeout`.
pub async fn connect_service(host: &str, port: u16, timeout: Duration) -> io::Result<FlowSocket> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect((host, port)))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    Ok(FlowSocket::new(stream))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_queue_counts_completed_deliveries() {
        let mut q = WriteQueue::default();
        q.push(Bytes::from_static(b"hello"));
        q.push(Bytes::from_static(b"world"));
        assert_eq!(q.len(), 10);
        q.consume(3);
        assert_eq!(q.take_completed(), (0, 3));
        q.consume(4);
        assert_eq!(q.take_completed(), (1, 4));
        assert_eq!(q.len(), 3);
        q.consume(3);
        assert!(q.is_empty());
        assert_eq!(q.take_completed(), (1, 3));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn reads_into_buffer_and_writes_queue_through_real_sockets() {
        let listener = bind_listener("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::spawn(async move { TcpStream::connect(addr).await.unwrap() });
        let (server, _) = listener.accept().await.unwrap();
        let client = FlowSocket::new(client.await.unwrap());
        let server = FlowSocket::new(server);

        let mut q = WriteQueue::default();
        q.push(Bytes::from_static(b"abc"));
        q.push(Bytes::from_static(b"defg"));
        std::future::poll_fn(|cx| client.poll_write_queue(cx, &mut q))
            .await
            .unwrap();
        assert_eq!(q.take_completed(), (2, 7));
        client.shutdown_write();

        let mut got = BytesMut::new();
        loop {
            let n = std::future::poll_fn(|cx| server.poll_read_into(cx, &mut got, 2))
                .await
                .unwrap();
            if n == 0 {
                break;
            }
            assert!(n <= 2);
        }
        assert_eq!(&got[..], b"abcdefg");
    }
}
