//! Raft: openraft 0.9 (`storage-v2`) over sled, with a tonic transport.
//!
//! ```text
//!  control/agents ──client_write(Command)──► openraft ──append──► log_store (sled "log", flushed)
//!                                               │ commit
//!                                               ▼
//!                                       state_machine: State::apply ──► SharedState (readers)
//!                                               │ every N entries: snapshot ──► sled "snapshot", purge log
//!  other schedulers ◄── network (raft.proto: vote, append, snapshot, forward) ──►
//! ```
//!
//! - [`log_store`]: the raft log and vote in sled trees; an append is acknowledged to
//!   openraft only after `flush_async` returns.
//! - [`state_machine`]: applies committed [`Command`]s to the in-memory [`State`],
//!   builds and installs snapshots (persisted in sled).
//! - [`network`]: openraft's RPCs over tonic, client and server.

pub mod log_store;
pub mod network;
pub mod state_machine;

use std::io::Cursor;

use crate::state::{Command, Response};

openraft::declare_raft_types!(
    /// openraft's type configuration for slipway.
    pub TypeConfig:
        D = Command,
        R = Response,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// The raft handle the rest of the scheduler uses.
pub type Raft = openraft::Raft<TypeConfig>;
/// Raft member ids.
pub type NodeId = u64;
