//! Loading a sealed model (`.fsm`, docs/sealed-model.md) into the guest: the header, then
//! every sealed chunk in order, several in flight, then `LoadModelEnd`. The host reads only
//! the public header; the guest authenticates and decrypts each chunk into private memory.

use super::{CHUNKS_IN_FLIGHT, GuestError, GuestVm};
use sealed_model::Header;
use virtio_llm::wire::control::msg_type::{LOAD_MODEL_END, LOAD_SEALED_BEGIN, LOAD_SEALED_CHUNK};
use virtio_llm::wire::control::{ControlCommand, LoadModelEnd, LoadSealedBegin, LoadSealedChunk};

impl GuestVm {
    /// Streams the whole `.fsm` `file` into the guest as model `model_id`; `progress(bytes)`
    /// after each chunk is acknowledged (sealed bytes of the body). The file is checked
    /// first (its header parses and the body has exactly the header's length); the guest
    /// checks everything again, and refuses with `SealRejected` what does not unseal.
    pub fn load_sealed(
        &mut self,
        model_id: u32,
        file: &[u8],
        progress: &mut dyn FnMut(u64),
    ) -> Result<(), GuestError> {
        let (header, header_bytes, body) =
            Header::split_file(file).map_err(GuestError::SealedFile)?;
        self.command(&ControlCommand::LoadSealedBegin(LoadSealedBegin {
            model_id,
            header: header_bytes,
        }))?;
        self.ack("start loading the sealed model", LOAD_SEALED_BEGIN)?;
        // `split_file` checked the body's length against the header: every range is in it.
        let chunks: Vec<(u64, &[u8])> = header
            .chunk_plan()
            .map(|c| {
                let r = c.sealed();
                (c.index, &body[r.start as usize..r.end as usize])
            })
            .collect();
        let (mut sent, mut acked) = (0usize, 0usize);
        let mut done = 0u64;
        while acked < chunks.len() {
            while sent < chunks.len() && sent - acked < CHUNKS_IN_FLIGHT {
                let (index, data) = chunks[sent];
                self.command(&ControlCommand::LoadSealedChunk(LoadSealedChunk {
                    model_id,
                    index,
                    data,
                }))?;
                sent += 1;
            }
            if let Err(e) = self.ack("take a sealed chunk", LOAD_SEALED_CHUNK) {
                // The chunks still in flight are answered too (BadRequest: the load is
                // over); take their acks so the next command meets its own.
                if matches!(e, GuestError::Refused { .. }) {
                    for _ in acked + 1..sent {
                        let _ = self.ack("take a sealed chunk", LOAD_SEALED_CHUNK);
                    }
                }
                return Err(e);
            }
            done += chunks[acked].1.len() as u64;
            acked += 1;
            progress(done);
        }
        // A sealed load's `LoadModelEnd` carries no hash (zero): the guest checks the
        // header's content digest instead.
        self.command(&ControlCommand::LoadModelEnd(LoadModelEnd {
            model_id,
            sha256: [0; 32],
        }))?;
        self.ack("accept the sealed model", LOAD_MODEL_END)?;
        Ok(())
    }
}
