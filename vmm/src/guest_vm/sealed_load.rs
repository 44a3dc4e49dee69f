//! Loading a sealed model (`.fsm`, docs/sealed-model.md) into the guest: the header with the
//! owners to accept, then every sealed chunk in order, several in flight, then
//! `LoadModelEnd`. The host reads only the public header; the guest checks the owner and
//! signature, and authenticates and decrypts each chunk into private memory.

use super::{CHUNKS_IN_FLIGHT, GuestError, GuestVm, Interrupt};
use sealed_model::{Header, OwnerPublicKey};
use virtio_llm::spec::{MAX_ACCEPTED_OWNERS, sealed_flag};
use virtio_llm::wire::control::msg_type::{LOAD_MODEL_END, LOAD_SEALED_BEGIN, LOAD_SEALED_CHUNK};
use virtio_llm::wire::control::{ControlCommand, LoadModelEnd, LoadSealedBegin, LoadSealedChunk};
use virtio_llm::wire::request::GenerateRequest;
use virtio_llm::wire::response::{EndOfStream, Tokens as TokensMsg};

/// What a refused `LoadSealedBegin` names in [`GuestError::Refused`].
pub const BEGIN_SEALED: &str = "start loading the sealed model";

/// How the guest is to load a sealed model.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SealedLoadOptions {
    /// The owners whose models the guest accepts, at most `MAX_ACCEPTED_OWNERS` (16). Empty
    /// (the default): any owner whose signature verifies. This is the host's policy, handed
    /// to the guest; it protects the host's users from a model it did not mean to serve,
    /// not the guest from the host.
    pub accepted_owners: Vec<OwnerPublicKey>,
    /// Benchmarks only: the guest stores the whole sealed body, then decrypts it at the end
    /// (instead of decrypting each chunk as it arrives), and needs a tag's worth of extra
    /// private memory per chunk.
    pub strawman: bool,
    /// The guest may start after a layer prefix it kept of a model with the same content
    /// digest ([`GuestVm::unload_model_keeping`]); only the layers after it are sent. Not
    /// with `strawman`.
    pub resume: bool,
}

/// A sealed load under way: the guest accepted the header ([`GuestVm::begin_sealed`]);
/// [`GuestVm::finish_sealed`] sends the body.
#[derive(Debug)]
pub struct SealedLoading<'f> {
    model_id: u32,
    header: Header,
    body: &'f [u8],
    /// The first layer to send (after the guest's kept prefix).
    first_layer: u32,
}

/// What [`GuestVm::load_sealed_and_generate`] loads, and the request it runs meanwhile.
#[derive(Debug)]
pub struct FirstRequest<'a> {
    pub model_id: u32,
    /// The whole `.fsm` file.
    pub file: &'a [u8],
    pub options: &'a SealedLoadOptions,
    /// The context of the request's session (`request.session_id`, opened on the model).
    pub context_len: u32,
    pub request: &'a GenerateRequest,
}

/// A sealed model the guest accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SealedLoaded {
    /// The owner who signed the header. The host reads it from the public header; the
    /// guest's Ok means that this owner's signature verified there and that the owner was
    /// among the accepted ones (any, if none were listed).
    pub owner: OwnerPublicKey,
    /// SHA-256 of the plaintext body, which the guest checked (from the header).
    pub content_digest: [u8; 32],
    /// Plaintext bytes the guest holds.
    pub body_bytes: u64,
    /// Layers the guest had kept from an earlier load (none were sent), 0 for a whole load.
    pub resumed_layers: u32,
    /// Sealed body bytes sent.
    pub sent_bytes: u64,
}

impl SealedLoaded {
    fn of(loading: &SealedLoading<'_>, sent_bytes: u64) -> Self {
        let header = &loading.header;
        Self {
            owner: header.owner(),
            content_digest: *header.content_digest(),
            body_bytes: header.body_bytes(),
            resumed_layers: loading.first_layer,
            sent_bytes,
        }
    }
}

impl GuestVm {
    /// [`GuestVm::load_sealed_with`] with the default options: any owner whose signature
    /// verifies, chunks decrypted as they arrive.
    pub fn load_sealed(
        &mut self,
        model_id: u32,
        file: &[u8],
        progress: &mut dyn FnMut(u64),
    ) -> Result<SealedLoaded, GuestError> {
        self.load_sealed_with(model_id, file, &SealedLoadOptions::default(), progress)
    }

    /// Streams the whole `.fsm` `file` into the guest as model `model_id`, loaded as
    /// `options` say; `progress(bytes)` after each chunk is acknowledged (sealed bytes of the
    /// body). The file is checked first (its header parses and the body has exactly the
    /// header's length); the guest checks everything again, and refuses with `SealRejected`
    /// what does not unseal or is signed by an owner it was not told to accept.
    pub fn load_sealed_with(
        &mut self,
        model_id: u32,
        file: &[u8],
        options: &SealedLoadOptions,
        progress: &mut dyn FnMut(u64),
    ) -> Result<SealedLoaded, GuestError> {
        let loading = self.begin_sealed(model_id, file, options)?;
        self.finish_sealed(loading, progress)
    }

    /// The first half of a sealed load: checks `file`, and has the guest accept its header
    /// (owner, signature, recipient) and reserve the plaintext's memory. Until
    /// [`Self::finish_sealed`] streams the chunks, the device may open a session on the
    /// model and send it a request: the guest runs it as the layers arrive (the pipeline).
    pub fn begin_sealed<'f>(
        &mut self,
        model_id: u32,
        file: &'f [u8],
        options: &SealedLoadOptions,
    ) -> Result<SealedLoading<'f>, GuestError> {
        let (header, header_bytes, body) =
            Header::split_file(file).map_err(GuestError::SealedFile)?;
        if options.accepted_owners.len() > MAX_ACCEPTED_OWNERS {
            return Err(GuestError::TooManyOwners {
                count: options.accepted_owners.len(),
                max: MAX_ACCEPTED_OWNERS,
            });
        }
        let accepted: Vec<[u8; 32]> = options.accepted_owners.iter().map(|k| k.0).collect();
        let flags = match (options.strawman, options.resume) {
            (true, _) => sealed_flag::STRAWMAN,
            (false, true) => sealed_flag::RESUME,
            (false, false) => 0,
        };
        self.command(&ControlCommand::LoadSealedBegin(LoadSealedBegin {
            model_id,
            flags,
            accepted_owners: &accepted,
            header: header_bytes,
        }))?;
        let ack = self.ack(BEGIN_SEALED, LOAD_SEALED_BEGIN)?;
        let first_layer = if flags & sealed_flag::RESUME != 0 {
            ack.object_id
        } else {
            0
        };
        if first_layer as usize >= header.layers().len() {
            return Err(GuestError::Protocol(format!(
                "the guest kept {first_layer} of the sealed model's {} layers: none left to send",
                header.layers().len()
            )));
        }
        Ok(SealedLoading {
            model_id,
            header,
            body,
            first_layer,
        })
    }

    /// The second half of a sealed load: every chunk in order, then `LoadModelEnd`;
    /// `progress(bytes)` after each chunk is acknowledged (sealed bytes of the body).
    pub fn finish_sealed(
        &mut self,
        loading: SealedLoading<'_>,
        progress: &mut dyn FnMut(u64),
    ) -> Result<SealedLoaded, GuestError> {
        let model_id = loading.model_id;
        let sent = self.send_sealed_chunks(&loading, progress)?;
        // A sealed load's `LoadModelEnd` carries no hash (zero): the guest checks the
        // header's content digest instead.
        self.command(&ControlCommand::LoadModelEnd(LoadModelEnd {
            model_id,
            sha256: [0; 32],
        }))?;
        self.ack("accept the sealed model", LOAD_MODEL_END)?;
        Ok(SealedLoaded::of(&loading, sent))
    }

    /// The sealed-load pipeline: loads `first.file` as model `first.model_id` while the
    /// first request on it runs. Once the guest accepted the header, opens the request's
    /// session on the model and sends the request, then the chunks: the guest computes each
    /// layer of the prompt as soon as that layer is in. The request's tokens and end come
    /// to `on_tokens` as with [`GuestVm::generate_until`] (`interrupt` is asked once the
    /// chunks are sent); then the load's end is acknowledged.
    pub fn load_sealed_and_generate(
        &mut self,
        first: FirstRequest<'_>,
        progress: &mut dyn FnMut(u64),
        on_tokens: &mut dyn FnMut(&[u32], &[u8]),
        interrupt: &dyn Fn() -> Option<Interrupt>,
    ) -> Result<(SealedLoaded, EndOfStream), GuestError> {
        self.load_sealed_and_generate_messages(
            first,
            progress,
            &mut |t| on_tokens(&t.token_ids, &t.text),
            interrupt,
        )
    }

    /// [`Self::load_sealed_and_generate`], handing `on_tokens` each `Tokens` whole (with
    /// its logprobs, when the request asked). With `options.resume`, the guest computes the
    /// layers of a prefix it kept at once and waits only for the rest.
    pub fn load_sealed_and_generate_messages(
        &mut self,
        first: FirstRequest<'_>,
        progress: &mut dyn FnMut(u64),
        on_tokens: &mut dyn FnMut(&TokensMsg),
        interrupt: &dyn Fn() -> Option<Interrupt>,
    ) -> Result<(SealedLoaded, EndOfStream), GuestError> {
        let FirstRequest {
            model_id,
            file,
            options,
            context_len,
            request,
        } = first;
        let loading = self.begin_sealed(model_id, file, options)?;
        self.open_session(request.session_id, model_id, context_len)?;
        self.start_request(request)?;
        let sent = match self.send_sealed_chunks(&loading, progress) {
            Ok(sent) => sent,
            Err(e) => {
                // The request fails with the load; take its error so nothing is left queued.
                let _ = self.await_request(request, &mut |_, _| {}, &|| None);
                return Err(e);
            }
        };
        self.command(&ControlCommand::LoadModelEnd(LoadModelEnd {
            model_id,
            sha256: [0; 32],
        }))?;
        // The guest finishes the load once the request is over: the tokens come first. A
        // request the guest refused (a bad prompt) leaves the load to end all the same:
        // its ack is taken, so the next command meets its own.
        let end = self.await_messages(request, on_tokens, interrupt);
        if let Err(GuestError::Request { .. }) = &end {
            self.ack("accept the sealed model", LOAD_MODEL_END)?;
        }
        let end = end?;
        self.ack("accept the sealed model", LOAD_MODEL_END)?;
        Ok((SealedLoaded::of(&loading, sent), end))
    }

    /// Sends every chunk of the body from the load's first layer on, in order,
    /// `CHUNKS_IN_FLIGHT` at a time; the sealed bytes sent.
    fn send_sealed_chunks(
        &mut self,
        loading: &SealedLoading<'_>,
        progress: &mut dyn FnMut(u64),
    ) -> Result<u64, GuestError> {
        let (model_id, body) = (loading.model_id, loading.body);
        // `split_file` checked the body's length against the header: every range is in it.
        let chunks: Vec<(u64, &[u8])> = loading
            .header
            .chunk_plan()
            .filter(|c| c.layer >= loading.first_layer)
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
        Ok(done)
    }
}
