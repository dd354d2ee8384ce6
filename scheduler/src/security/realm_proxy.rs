//! The registry's token realm in front of a replicated cluster.
//!
//! The registry names one `realm` URL; any member can answer it (grants are checked
//! with the CA every member holds), but one member's address stops working when that
//! member dies. `slipway-scheduler realm-proxy` listens where the realm points and
//! hands each connection to the first member whose HTTP side accepts it, in the order
//! given. A load balancer or a DNS name over the members does the same job; this is
//! for fleets that have neither, run next to the registry.

use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument;

/// How long a member may take to accept before the next is tried (a member cut off by
/// a partition drops packets rather than refusing).
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// Forwards every connection `listener` accepts to the first of `members` (`host:port`
/// of their HTTP sides) that accepts it. Runs until dropped; a failed accept (e.g. out
/// of file descriptors) is logged and retried after a pause.
pub async fn serve(listener: TcpListener, members: Vec<String>) {
    loop {
        let (mut client, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(err) => {
                tracing::warn!(%err, "cannot accept a connection; retrying in 100 ms");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let members = members.clone();
        let forward = async move {
            for member in &members {
                let connect = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(member)).await;
                if let Ok(Ok(mut server)) = connect {
                    let _ = server.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    return;
                }
            }
            tracing::warn!(?members, "no scheduler accepts the registry's token request");
        };
        tokio::spawn(forward.instrument(tracing::info_span!("realm_proxy", %peer)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn connections_go_to_the_first_member_that_accepts() {
        // A dead member (nothing listens on its port), then a live one that echoes.
        let dead = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        let live = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let live_addr = live.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = live.accept().await.unwrap();
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).await.unwrap();
            s.write_all(&buf).await.unwrap();
        });
        let proxy = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy_addr = proxy.local_addr().unwrap();
        tokio::spawn(serve(proxy, vec![dead.to_string(), live_addr.to_string()]));
        let mut client = TcpStream::connect(proxy_addr).await.unwrap();
        client.write_all(b"hello").await.unwrap();
        let mut back = [0u8; 5];
        client.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"hello");
    }
}
