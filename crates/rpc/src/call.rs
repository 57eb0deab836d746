//! A call to the app and its answer, as both transports take and give them.

use ferrocable_node::remote::{
    CommandCall, CommandReply, ConnectCall, ConnectReply, DisconnectCall, Status,
};

/// A call, as the node made it.
#[derive(Debug)]
pub(crate) enum Payload {
    Connect(ConnectCall),
    Command(CommandCall),
    Disconnect(DisconnectCall),
}

impl Payload {
    pub(crate) fn method(&self) -> &'static str {
        match self {
            Payload::Connect(_) => "connect",
            Payload::Command(_) => "command",
            Payload::Disconnect(_) => "disconnect",
        }
    }

    pub(crate) fn sid(&self) -> Option<&str> {
        match self {
            Payload::Connect(c) => c.sid.as_deref(),
            Payload::Command(c) => c.sid.as_deref(),
            Payload::Disconnect(c) => c.sid.as_deref(),
        }
    }
}

/// The app's answer.
#[derive(Debug)]
pub(crate) enum Reply {
    Connect(ConnectReply),
    Command(CommandReply),
    Disconnect(Status, String),
}
