//! The guest's echo service: every `EchoRequest` comes back as an `EchoReply` with the same
//! bytes. It carries no model and nothing private; it is how the transport is tested and
//! measured end to end.

use super::{DriverError, DriverMemory, LlmDriver, Transport};
use crate::wire::echo::EchoReply;
use crate::wire::request::RequestMsg;
use crate::wire::response::ResponseMsg;
use alloc::vec::Vec;

/// What one step of the service did.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing was waiting.
    Idle,
    /// One echo was answered.
    Echoed,
    /// A request that is not an echo arrived and was dropped.
    Ignored,
    /// The reply is waiting for a free transmit buffer; call again after parking.
    Blocked,
}

/// Serves one request. A reply that cannot go out yet is kept in `pending` and sent first
/// on the next call.
pub fn step<M: DriverMemory, T: Transport>(
    driver: &mut LlmDriver<M, T>,
    pending: &mut Option<ResponseMsg>,
    scratch: &mut Vec<u8>,
) -> Result<Step, DriverError> {
    if let Some(reply) = pending.take() {
        if !driver.send_response(&reply, scratch)? {
            *pending = Some(reply);
            return Ok(Step::Blocked);
        }
        return Ok(Step::Echoed);
    }
    match driver.poll_request(scratch)? {
        None => Ok(Step::Idle),
        Some(RequestMsg::Echo(e)) => {
            let reply = ResponseMsg::Echo(EchoReply {
                request_id: e.request_id,
                data: e.data,
            });
            if driver.send_response(&reply, scratch)? {
                Ok(Step::Echoed)
            } else {
                *pending = Some(reply);
                Ok(Step::Blocked)
            }
        }
        Some(_) => Ok(Step::Ignored),
    }
}
