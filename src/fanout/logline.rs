//! A fan-out session's access-log line (`[log] access`, `crate::access`): the same
//! fields as any session's, with `node` listing every node it was connected to
//! (comma-separated), `to_broker` the bytes the client sent (each went to one or
//! more nodes), `to_client` the bytes written to it, and `close` from why it ended.

use super::session::{End, Outcome};
use crate::access::{Close, ConnackSeen, Entry};
use crate::metrics::Reject;

/// Finish the line of a session that ran (`listener_closed`: the listener's scope
/// ended it — shutdown, or the listener removed by a reload).
pub fn finish(mut e: Box<Entry>, o: &Outcome) {
    if let Some(code) = o.connack {
        e.connack(ConnackSeen::Code(code));
    }
    e.nodes(o.nodes.join(","));
    match close_for(o) {
        Some(Close::Rejected) => e.rejected(Reject::NoNode),
        Some(c) => e.close = Some(c),
        None => e.closed_by_gateway(true, None),
    }
    e.finish(o.from_client, o.to_client);
}

/// The `close` field; `None` when the listener's scope ended the session.
fn close_for(o: &Outcome) -> Option<Close> {
    Some(match o.end {
        End::Disconnect => Close::Client,
        End::ClientClosed if o.client_error => Close::ClientError,
        End::ClientClosed => Close::Client,
        End::KeepAlive => Close::KeepAlive,
        End::Malformed => Close::Malformed,
        End::Protocol => Close::Protocol,
        End::TooLarge => Close::TooLarge,
        // Every node refused the CONNECT: the brokers' answer (in `connack`).
        End::Refused => Close::Broker,
        // No node took it at all: refused like any client with no node.
        End::NoNode if o.nodes.is_empty() => Close::Rejected,
        // The last node connection was lost.
        End::NoNode => Close::NodeDown,
        End::TakenOver => Close::TakenOver,
        End::Shutdown => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(end: End, nodes: &[&str], client_error: bool) -> Outcome {
        Outcome {
            end,
            client_error,
            from_client: 0,
            to_client: 0,
            connack: Some(0),
            nodes: nodes.iter().map(|n| n.to_string()).collect(),
        }
    }

    #[test]
    fn close_causes_follow_why_the_session_ended() {
        let c = |end, nodes: &[&str], err| close_for(&outcome(end, nodes, err));
        assert_eq!(c(End::Disconnect, &["n1"], false), Some(Close::Client));
        assert_eq!(c(End::ClientClosed, &["n1"], false), Some(Close::Client));
        assert_eq!(
            c(End::ClientClosed, &["n1"], true),
            Some(Close::ClientError)
        );
        assert_eq!(c(End::KeepAlive, &["n1"], false), Some(Close::KeepAlive));
        assert_eq!(c(End::Malformed, &["n1"], false), Some(Close::Malformed));
        assert_eq!(c(End::NoNode, &["n1"], false), Some(Close::NodeDown));
        assert_eq!(c(End::NoNode, &[], false), Some(Close::Rejected));
        assert_eq!(c(End::Refused, &[], false), Some(Close::Broker));
        assert_eq!(c(End::TakenOver, &["n1"], false), Some(Close::TakenOver));
        assert_eq!(c(End::Shutdown, &["n1"], false), None);
    }
}
