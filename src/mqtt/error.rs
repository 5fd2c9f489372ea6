//! The one error type of the MQTT readers: why bytes are not an acceptable CONNECT.
//! It sits below the readers (`wire`, `properties`, `connect`) so that none of them
//! imports another for it.

/// Why the first bytes of a connection are not an acceptable CONNECT.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    /// First bytes are not an MQTT CONNECT at all: another packet type, HTTP, a TLS
    /// ClientHello, garbage. Detected from the first byte.
    #[error("not an MQTT CONNECT")]
    NotConnect,
    /// CONNECT framing/content is malformed (reason carried for the debug log).
    #[error("malformed CONNECT: {0}")]
    Malformed(&'static str),
    /// Well-formed up to the protocol level, but the level is not 3/4/5 (or the name
    /// and level do not match, e.g. `MQTT` with level 3): reply CONNACK 0x01.
    #[error("unsupported MQTT protocol level {0}")]
    UnsupportedProtocol(u8),
    /// Declared remaining length makes the packet (this many bytes) larger than the
    /// limit: refuse without reading it.
    #[error("CONNECT of {0} bytes exceeds the size limit")]
    TooLarge(usize),
}

impl ConnectError {
    /// The `reason` label of `mqgate_connections_rejected_total` for this error.
    pub fn reason(&self) -> &'static str {
        match self {
            ConnectError::NotConnect => "invalid",
            ConnectError::Malformed(_) => "malformed",
            ConnectError::UnsupportedProtocol(_) => "protocol",
            ConnectError::TooLarge(_) => "too_large",
        }
    }
}
