//! Read-only views of the few MQTT packets mqgate has to understand.
//!
//! mqgate is a layer-4 proxy: it re-encodes no client traffic, except the CONNECT of
//! a listener that puts the client certificate's identity into it ([`rewrite`]). It
//! only needs to
//! *look at* the client's first packet (CONNECT) to pick a broker node, and at the
//! broker's first packet (CONNACK) to count return codes and latency. So this module
//! is a set of pure functions over borrowed bytes — no I/O, no allocation on the
//! parse path, no `unsafe`, no panics on any input — that return views borrowing
//! from the buffer the caller will forward unchanged anyway.
//!
//! Incremental use: the connection task reads into a buffer and calls
//! [`frame_len`] after every read (it answers [`Parse::Incomplete`] until the fixed
//! header is complete, and refuses an oversized packet from its header alone);
//! once `frame_len` bytes are buffered, [`parse_connect`] reads the packet.
//! [`observe_connack`] does the same for the broker's reply.
//!
//! - [`connect`]: CONNECT framing, validation (MQTT 3.1, 3.1.1, 5.0) and the health
//!   check's CONNECT encoder.
//! - [`connack`]: CONNACK observation and the CONNACKs mqgate sends itself.
//! - [`scanner`]: packet boundaries in a relayed stream (packet-aware relay).
//! - [`subscribe`]: SUBSCRIBE/UNSUBSCRIBE/SUBACK/UNSUBACK views and the replay encoder.
//! - [`rewrite`]: a CONNECT with another client id / username (lengths re-encoded).

pub mod connack;
pub mod connect;
mod error;
mod properties;
pub mod rewrite;
pub mod scanner;
pub mod subscribe;
mod wire;

pub use connack::{
    connack_reply, connack_reply_v5_with_reason, observe_connack, unavailable_reply, ConnackInfo,
    CONNECT_DISCONNECT,
};
pub use connect::{
    encode_connect_v311, frame_len, parse_connect, Connect, ConnectError, ProtocolVersion, Will,
};

/// Result of an incremental parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parse<T> {
    /// Enough bytes were available; the value is ready.
    Complete(T),
    /// More bytes are needed before anything can be said.
    Incomplete,
}
