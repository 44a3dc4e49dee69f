//! Control commands while a batch runs. A batch can run for as long as requests keep
//! joining, so the commands a new request needs first (`OpenSession`, `GetToolStyle`), and
//! those that touch nothing running (`Stats`, `GetStatement`), are served between steps. A
//! `CloseSession` of a running request's session ends that request first (`Cancelled`,
//! as the protocol says of a running request), then closes it. Every other command (loads,
//! unloads, KV eviction, probes) could take what the batch runs on: it waits, and no
//! request joins, until the batch has ended; later commands wait behind it.

use super::{Batch, Service};
use crate::service::{Environment, ack};
use alloc::vec::Vec;
use inference_guest::generate::Finish;
use inference_guest::parallel::Parallel;
use virtio_llm::Status;
use virtio_llm::driver::{DriverError, DriverMemory, LlmDriver, Transport};
use virtio_llm::wire::control::ControlCommand;

/// A command taken between steps.
pub(super) enum Taken {
    /// Its bytes are in the batch's command buffer.
    Command,
    /// It did not decode: it is answered `BadRequest`, as the main loop answers it.
    Malformed,
}

/// What the batch does with a command.
enum Serve {
    Now,
    /// After the running request on this session ended.
    Closing(u32),
    AfterBatch,
}

fn serve(cmd: &ControlCommand<'_>) -> Serve {
    match cmd {
        ControlCommand::OpenSession(_)
        | ControlCommand::Stats(_)
        | ControlCommand::GetStatement(_)
        | ControlCommand::GetToolStyle(_) => Serve::Now,
        ControlCommand::CloseSession(c) => Serve::Closing(c.session_id),
        _ => Serve::AfterBatch,
    }
}

impl Service {
    /// Serves the command the batch took between steps, or keeps it for the batch's end.
    pub(super) fn batch_command<M: DriverMemory, T: Transport>(
        &mut self,
        batch: &mut Batch,
        taken: Taken,
        driver: &mut LlmDriver<M, T>,
        par: &dyn Parallel,
        env: &dyn Environment,
    ) -> Result<(), DriverError> {
        if let Taken::Malformed = taken {
            return self.send_reply(driver, env, &ack(0, Status::BadRequest, 0));
        }
        let buf = core::mem::take(&mut batch.command);
        let how = match ControlCommand::decode(&buf) {
            Ok(cmd) => serve(&cmd),
            Err(_) => return self.send_reply(driver, env, &ack(0, Status::BadRequest, 0)),
        };
        match how {
            Serve::AfterBatch => {
                batch.deferred_command = Some(buf);
                batch.closed = true;
                return Ok(());
            }
            Serve::Closing(session_id) => {
                if let Some(r) = batch
                    .running
                    .iter_mut()
                    .find(|r| r.session_id == session_id && r.end.is_none())
                {
                    r.end = Some(Ok(Finish::Stopped));
                }
                self.end_finished(batch, driver, env)?;
            }
            Serve::Now => {}
        }
        // The batch's tokenizer is out of eviction's reach while the command runs (opening a
        // session makes room): its requests' text goes on with their tokens.
        let tokenizer = self
            .models
            .get_mut(&batch.model_id)
            .and_then(|m| m.tokenizer.take());
        let reply = match ControlCommand::decode(&buf) {
            Ok(cmd) => self.command(cmd, driver, par, env),
            Err(_) => ack(0, Status::BadRequest, 0),
        };
        if let Some(m) = self.models.get_mut(&batch.model_id)
            && tokenizer.is_some()
        {
            m.tokenizer = tokenizer;
        }
        batch.command = buf;
        self.send_reply(driver, env, &reply)
    }

    /// Serves the command that waited for the batch's end (`bytes`, as it came).
    pub(super) fn deferred_command<M: DriverMemory, T: Transport>(
        &mut self,
        bytes: Vec<u8>,
        driver: &mut LlmDriver<M, T>,
        par: &dyn Parallel,
        env: &dyn Environment,
    ) -> Result<(), DriverError> {
        let reply = match ControlCommand::decode(&bytes) {
            Ok(cmd) => self.command(cmd, driver, par, env),
            Err(_) => ack(0, Status::BadRequest, 0),
        };
        self.send_reply(driver, env, &reply)
    }
}
