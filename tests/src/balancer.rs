//! [`Balancer`]: what an operator puts in front of a replicated scheduler's HTTP sides
//! for the registry's token `realm` (one URL in the registry's config): a TCP forwarder
//! on 127.0.0.1 that hands each connection to the first scheduler that accepts it, so
//! pushes and pulls keep working while any member is down. Any member answers
//! `/v2/token`: grants are checked with the CA every member holds.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// How long a backend may take to accept before the next is tried (a member cut off by
/// a partition drops packets rather than refusing).
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// A TCP forwarder to the first of its backends that accepts; stops when dropped.
pub struct Balancer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Balancer {
    /// Listens on a free 127.0.0.1 port and forwards to `backends` (`host:port`), tried
    /// in order for each connection.
    pub async fn start(backends: Vec<String>) -> Balancer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the balancer");
        let addr = listener.local_addr().expect("the balancer's address");
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let backends = backends.clone();
                tokio::spawn(async move {
                    for backend in &backends {
                        let connect = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(backend));
                        if let Ok(Ok(mut server)) = connect.await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                            return;
                        }
                    }
                });
            }
        });
        Balancer { addr, task }
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
