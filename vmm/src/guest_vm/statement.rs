//! The guest's signed statement (docs/sealed-session.md): its session and sealing keys, its
//! measurement, and the isolation and key-root kind this host reports, signed in the guest
//! with a key its key root derives. The host relays it to clients; it cannot sign one.

use super::{GuestError, GuestVm};
use crate::hypervisor::IsolationLevel;
use virtio_llm::spec::{SIGNED_STATEMENT_BYTES, feature};
use virtio_llm::wire::control::{ControlCommand, ControlReply};
use virtio_llm::wire::sealed_session::GetStatement;

impl GuestVm {
    /// Whether the guest serves sealed requests (`feature::SEALED_SESSION`).
    pub fn seals_sessions(&self) -> bool {
        self.llm.negotiated(feature::SEALED_SESSION)
    }

    /// The guest's signed statement, naming this VM's isolation level and (`production_root`)
    /// the kind of key root it was given.
    pub fn statement(
        &mut self,
        production_root: bool,
    ) -> Result<[u8; SIGNED_STATEMENT_BYTES], GuestError> {
        let isolation = match self.isolation.level() {
            IsolationLevel::None => 0,
            IsolationLevel::PrivateMemory => 1,
            IsolationLevel::ProtectedVm => 2,
        };
        let req = GetStatement {
            isolation,
            key_root: u8::from(production_root),
        };
        self.command(&ControlCommand::GetStatement(req))?;
        match self.llm.recv_reply(self.deadlines.command) {
            Ok(ControlReply::Statement(s)) => Ok(s.statement),
            Ok(ControlReply::Ack(a)) => Err(GuestError::Refused {
                what: "the guest statement",
                status: a.status,
            }),
            Ok(other) => Err(GuestError::Protocol(format!(
                "expected the guest statement, got {other:?}"
            ))),
            Err(e) => Err(self.failure(e)),
        }
    }
}
