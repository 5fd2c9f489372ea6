//! How a fan-out session's connections end: each gets what is still queued for it
//! (e.g. the client's DISCONNECT), its write side shut down, and up to
//! [`CLOSE_LINGER`] for the other end to close. Also the size of the buffer the
//! session reads every socket into (`super::io`).

use super::link::NodeIo;
// How long a connection has to close once the session has closed its side: as long as
// the byte relay gives one.
use crate::relay::task::CLOSE_LINGER;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The read buffer the session reads every socket into, in turn.
pub const READ_BUF: usize = 16 * 1024;

/// Give every node connection what is still queued for it, shut its write side and
/// let it close (in tasks of their own, up to [`CLOSE_LINGER`]).
pub fn close_nodes(ios: Vec<NodeIo>, tracker: &tokio_util::task::TaskTracker) {
    for mut io in ios {
        tracker.spawn(async move {
            let rest = io.out.take_rest();
            let closing = async {
                if !rest.is_empty() && io.stream.write_all(&rest).await.is_err() {
                    return;
                }
                let _ = io.stream.shutdown().await;
                // Until the node closes its side (what it still sends is dropped).
                let mut b = [0u8; 4096];
                while let Ok(n) = io.stream.read(&mut b).await {
                    if n == 0 {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(CLOSE_LINGER, closing).await;
        });
    }
}

/// Write what is still queued for the client and shut its write side (up to
/// [`CLOSE_LINGER`]); returns the bytes written.
pub async fn close_client<S: AsyncWrite + Unpin>(client: &mut S, rest: Vec<u8>) -> u64 {
    let closing = async {
        if !rest.is_empty() && client.write_all(&rest).await.is_err() {
            return 0;
        }
        let _ = client.flush().await;
        let _ = client.shutdown().await;
        rest.len() as u64
    };
    tokio::time::timeout(CLOSE_LINGER, closing)
        .await
        .unwrap_or(0)
}
