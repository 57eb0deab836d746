//! What the server's own routes (the cable, `/health`, `/metrics`, `/_broadcast`) share.

use std::sync::Arc;

use ferrocable_node::Node;

use crate::origin::OriginPolicy;

/// Shared state of the server's own routes.
#[derive(Clone)]
pub(crate) struct ServerState {
    /// The cable node.
    pub node: Node,
    /// Who may open the cable.
    pub origins: Arc<OriginPolicy>,
    /// Bearer key of `POST /_broadcast`.
    pub broadcast_key: Arc<str>,
    /// The app behind RPC, if any (its metrics are served with the node's).
    pub rpc: Option<ferrocable_rpc::RpcClient>,
}
