//! quinn over turmoil's simulated UDP: the real QUIC stack, a simulated
//! network underneath.

use std::fmt;
use std::future::Future;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};

type Readable = Pin<Box<dyn Future<Output = io::Result<()>> + Send>>;

/// A turmoil UDP socket as quinn's socket: one datagram per call (no GSO,
/// no GRO, no ECN).
pub struct SimUdp {
    io: Arc<turmoil::net::UdpSocket>,
    /// The pending readiness wait: turmoil's `readable()` holds the socket's
    /// receive lock while it waits, so it must survive between polls.
    readable: Mutex<Option<Readable>>,
}

impl SimUdp {
    /// Binds `addr` on the current simulated host.
    pub async fn bind(addr: SocketAddr) -> io::Result<SimUdp> {
        Ok(SimUdp {
            io: Arc::new(turmoil::net::UdpSocket::bind(addr).await?),
            readable: Mutex::new(None),
        })
    }
}

impl fmt::Debug for SimUdp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SimUdp").field("io", &self.io).finish()
    }
}

#[derive(Debug)]
struct AlwaysWritable;

impl UdpPoller for AlwaysWritable {
    fn poll_writable(self: Pin<&mut Self>, _cx: &mut Context) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl AsyncUdpSocket for SimUdp {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(AlwaysWritable)
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        match self.io.try_send_to(transmit.contents, transmit.destination) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(e),
            // An unreachable host is a lost datagram, as on a real network.
            Err(_) => Ok(()),
        }
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let mut readable = self.readable.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if readable.is_none() {
                match self.io.try_recv_from(&mut bufs[0]) {
                    Ok((len, addr)) => {
                        meta[0] = RecvMeta {
                            addr,
                            len,
                            stride: len,
                            ecn: None,
                            dst_ip: None,
                        };
                        return Poll::Ready(Ok(1));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        let io = self.io.clone();
                        *readable = Some(Box::pin(async move { io.readable().await }));
                    }
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
            let wait = readable.as_mut().expect("set just above");
            match wait.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(result) => {
                    *readable = None;
                    result?;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.io.local_addr()
    }

    fn may_fragment(&self) -> bool {
        false
    }
}
