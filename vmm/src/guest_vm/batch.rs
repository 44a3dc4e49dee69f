//! Several requests in flight at once on a guest that batches (`feature::BATCH`): start a
//! request without waiting for it, take the next message of any request in flight, and
//! interrupt one. Each request is held to its own [`RequestWatch`]; a guest that misses any
//! request's deadline or breaks its limits fails them all and is stopped, as with one
//! request. The single-request calls (`generate*`, `await_request`) are this with one
//! request in flight.

use super::request_watch::{CutOff, RequestWatch, Tokens};
use super::{GuestError, GuestVm, Interrupt};
use crate::devices::virtio_llm::HostError;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use virtio_llm::spec::feature;
use virtio_llm::wire::request::{CancelRequest, GenerateRequest, PreemptRequest, RequestMsg};
use virtio_llm::wire::response::{EndOfStream, ResponseMsg, Tokens as TokensMsg};

/// What one request in flight sent.
#[derive(Debug)]
pub enum Message {
    /// Tokens of request `request_id` (in the message).
    Tokens(TokensMsg),
    /// The end of request `request_id` (in the message): it is no longer in flight.
    End(EndOfStream),
    /// Request `request_id` failed in the guest ([`GuestError::Request`]); the others go
    /// on. It is no longer in flight.
    Failed { request_id: u64, error: GuestError },
}

impl Message {
    /// The request the message belongs to.
    pub fn request_id(&self) -> u64 {
        match self {
            Self::Tokens(t) => t.request_id,
            Self::End(e) => e.request_id,
            Self::Failed { request_id, .. } => *request_id,
        }
    }
}

/// Why a response cannot be taken: the guest is not trusted with another request.
#[derive(Debug)]
pub(super) enum Broken {
    /// A request's limits were broken.
    CutOff(CutOff),
    /// A response no request in flight expects.
    Unexpected(String),
}

/// The requests in flight and their watches; a plain function of the messages and the time
/// they came at, so tests drive it without a guest.
#[derive(Debug, Default)]
pub(super) struct InFlight {
    watches: BTreeMap<u64, RequestWatch>,
}

impl InFlight {
    pub fn len(&self) -> usize {
        self.watches.len()
    }

    pub fn contains(&self, id: u64) -> bool {
        self.watches.contains_key(&id)
    }

    pub fn add(&mut self, id: u64, watch: RequestWatch) {
        self.watches.insert(id, watch);
    }

    pub fn remove(&mut self, id: u64) {
        self.watches.remove(&id);
    }

    pub fn clear(&mut self) {
        self.watches.clear();
    }

    /// Marks request `id` interrupted; false when it is not in flight.
    pub fn interrupted(&mut self, id: u64, how: Interrupt) -> bool {
        self.watches
            .get_mut(&id)
            .map(|w| w.interrupted(how))
            .is_some()
    }

    /// How long the host may wait at `now` for the next message: the least any request in
    /// flight has left (`None` when none is in flight), or the first one's broken deadline.
    pub fn time_left(&self, now: Instant) -> Result<Option<Duration>, CutOff> {
        let mut least: Option<Duration> = None;
        for w in self.watches.values() {
            let left = w.time_left(now)?;
            least = Some(least.map_or(left, |l| l.min(left)));
        }
        Ok(least)
    }

    /// Takes `resp`, come at `now`: the message to hand over, or `None` for tokens of a
    /// cancelled request (dropped).
    pub fn route(&mut self, resp: ResponseMsg, now: Instant) -> Result<Option<Message>, Broken> {
        let id = match &resp {
            ResponseMsg::Tokens(t) => t.request_id,
            ResponseMsg::EndOfStream(e) => e.request_id,
            ResponseMsg::Error(e) => e.request_id,
            other => return Err(Broken::Unexpected(format!("{other:?}"))),
        };
        let Some(watch) = self.watches.get_mut(&id) else {
            return Err(Broken::Unexpected(format!(
                "{resp:?} for request {id}, which is not running"
            )));
        };
        match resp {
            ResponseMsg::Tokens(t) => match watch.tokens(t.token_ids.len(), now) {
                Ok(Tokens::Deliver) => Ok(Some(Message::Tokens(t))),
                Ok(Tokens::Discard) => Ok(None),
                Err(e) => Err(Broken::CutOff(e)),
            },
            ResponseMsg::EndOfStream(e) => {
                self.watches.remove(&id);
                Ok(Some(Message::End(e)))
            }
            ResponseMsg::Error(e) => {
                self.watches.remove(&id);
                // Guest text: escaped before it reaches a log or a client.
                let error = GuestError::Request {
                    status: e.status,
                    message: crate::devices::escape(e.message.as_bytes()),
                };
                Ok(Some(Message::Failed {
                    request_id: id,
                    error,
                }))
            }
            _ => unreachable!("other responses returned above"),
        }
    }
}

impl GuestVm {
    /// Whether the guest runs the requests it holds together (`feature::BATCH`): then
    /// several may be in flight ([`Self::begin_request`]); else one at a time.
    pub fn batches(&self) -> bool {
        self.llm.negotiated(feature::BATCH)
    }

    /// Requests sent and not yet ended.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Sends `req` and watches it from now: its messages come with
    /// [`Self::next_message`]. A guest that does not batch takes one request at a time
    /// ([`GuestError::OneAtATime`]).
    pub fn begin_request(&mut self, req: &GenerateRequest) -> Result<(), GuestError> {
        self.may_begin(req.request_id)?;
        self.start_request(req)?;
        self.watch_request(req);
        Ok(())
    }

    /// Whether request `id` may be sent now.
    fn may_begin(&self, id: u64) -> Result<(), GuestError> {
        if self.in_flight.contains(id) {
            return Err(GuestError::AlreadyRunning(id));
        }
        if self.in_flight.len() > 0 && !self.batches() {
            return Err(GuestError::OneAtATime);
        }
        Ok(())
    }

    /// Watches `req` (sent already) from now on.
    pub(super) fn watch_request(&mut self, req: &GenerateRequest) {
        let watch = RequestWatch::new(self.deadlines, req.sampling.max_tokens, Instant::now());
        self.in_flight.add(req.request_id, watch);
    }

    /// The next message of any request in flight, waiting at most `wait` (`None`: nothing
    /// came, or only tokens of a cancelled request). Any error fails every request in
    /// flight: the guest missed a deadline, broke a limit or the protocol (it is then
    /// stopped), or the link failed.
    pub fn next_message(&mut self, wait: Duration) -> Result<Option<Message>, GuestError> {
        let r = self.take_message(wait);
        if r.is_err() {
            self.in_flight.clear();
        }
        r
    }

    fn take_message(&mut self, wait: Duration) -> Result<Option<Message>, GuestError> {
        let left = match self.in_flight.time_left(Instant::now()) {
            Ok(Some(left)) => left,
            Ok(None) => return Ok(None),
            Err(e) => return Err(self.cut_off(e)),
        };
        let resp = match self.llm.recv_response(left.min(wait)) {
            Ok(r) => r,
            Err(HostError::Timeout(_)) => return Ok(None),
            Err(e) => return Err(self.failure(e)),
        };
        match self.in_flight.route(resp, Instant::now()) {
            Ok(m) => Ok(m),
            Err(Broken::CutOff(e)) => Err(self.cut_off(e)),
            Err(Broken::Unexpected(what)) => {
                Err(GuestError::Protocol(format!("unexpected response: {what}")))
            }
        }
    }

    /// Stops request `id` the way `how` says (it still ends with its `EndOfStream`); a
    /// request no longer in flight is left alone.
    pub fn interrupt_request(&mut self, id: u64, how: Interrupt) -> Result<(), GuestError> {
        if !self.in_flight.contains(id) {
            return Ok(());
        }
        let msg = match how {
            Interrupt::Cancel => RequestMsg::Cancel(CancelRequest { request_id: id }),
            Interrupt::Preempt if self.llm.negotiated(feature::PREEMPT) => {
                RequestMsg::Preempt(PreemptRequest { request_id: id })
            }
            Interrupt::Preempt => return Err(GuestError::NoPreemption),
        };
        self.llm
            .send_request(&msg, self.deadlines.command)
            .map_err(|e| self.failure(e))?;
        self.in_flight.interrupted(id, how);
        Ok(())
    }

    /// Stops a guest that missed a deadline or broke a request's limits: it is not trusted
    /// with another request, and a spinning one would keep costing the host CPU.
    pub(super) fn cut_off(&mut self, why: CutOff) -> GuestError {
        self.stop.stop();
        self.in_flight.clear();
        GuestError::CutOff(why)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guest_vm::request_watch::tests::D;
    use virtio_llm::Status;
    use virtio_llm::wire::response::{ErrorResponse, StopReason};

    fn tokens(id: u64, ids: &[u32]) -> ResponseMsg {
        ResponseMsg::Tokens(TokensMsg {
            request_id: id,
            token_ids: ids.to_vec(),
            text: Vec::new(),
            logprobs: Vec::new(),
        })
    }

    fn end(id: u64) -> ResponseMsg {
        ResponseMsg::EndOfStream(EndOfStream {
            request_id: id,
            reason: StopReason::MaxTokens,
            prompt_tokens: 1,
            generated_tokens: 1,
            cached_tokens: 0,
            timings: Default::default(),
        })
    }

    fn two(t0: Instant) -> InFlight {
        let mut f = InFlight::default();
        f.add(1, RequestWatch::new(D, 100, t0));
        f.add(2, RequestWatch::new(D, 3, t0));
        f
    }

    #[test]
    fn messages_go_to_their_own_request() {
        let t0 = Instant::now();
        let mut f = two(t0);
        let m = f.route(tokens(2, &[7]), t0).unwrap().unwrap();
        assert_eq!(m.request_id(), 2);
        assert!(matches!(f.route(end(1), t0), Ok(Some(Message::End(_)))));
        assert_eq!(f.len(), 1);
        assert!(!f.contains(1) && f.contains(2));
        // An ended request's late message breaks the protocol.
        assert!(matches!(
            f.route(tokens(1, &[1]), t0),
            Err(Broken::Unexpected(_))
        ));
    }

    #[test]
    fn an_error_fails_only_its_request() {
        let t0 = Instant::now();
        let mut f = two(t0);
        let err = ResponseMsg::Error(ErrorResponse {
            request_id: 1,
            status: Status::ContextFull,
            message: "full\x1b[2J".into(),
        });
        match f.route(err, t0) {
            Ok(Some(Message::Failed {
                request_id: 1,
                error: GuestError::Request { status, message },
            })) => {
                assert_eq!(status, Status::ContextFull);
                assert!(!message.contains('\x1b'), "{message}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(f.len(), 1);
        assert!(f.route(tokens(2, &[1]), t0).unwrap().is_some());
    }

    #[test]
    fn each_request_keeps_its_own_limits() {
        let t0 = Instant::now();
        let mut f = two(t0);
        f.route(tokens(2, &[1, 2, 3]), t0).unwrap();
        // Request 1 may still have 100; request 2 had its 3.
        f.route(tokens(1, &[1, 2, 3]), t0).unwrap();
        assert!(matches!(
            f.route(tokens(2, &[4]), t0),
            Err(Broken::CutOff(CutOff::TooManyTokens { sent: 4, max: 3 }))
        ));
    }

    #[test]
    fn the_wait_is_the_least_any_request_has_left() {
        let t0 = Instant::now();
        let mut f = two(t0);
        let at = |ms| t0 + Duration::from_millis(ms);
        // Request 1 had a token at 5 s: 2 s to its next; request 2 has 10 s for its first.
        f.route(tokens(1, &[1]), at(5_000)).unwrap();
        assert_eq!(f.time_left(at(6_000)), Ok(Some(Duration::from_secs(1))));
        // Request 1 is late: the guest is cut off though request 2 still has time.
        assert!(matches!(
            f.time_left(at(7_000)),
            Err(CutOff::Unresponsive {
                what: "next token",
                ..
            })
        ));
        f.remove(1);
        assert_eq!(f.time_left(at(7_000)), Ok(Some(Duration::from_secs(3))));
        f.clear();
        assert_eq!(f.time_left(at(7_000)), Ok(None));
    }

    #[test]
    fn a_cancelled_requests_tokens_are_dropped_the_others_are_not() {
        let t0 = Instant::now();
        let mut f = two(t0);
        assert!(f.interrupted(1, Interrupt::Cancel));
        assert!(!f.interrupted(9, Interrupt::Cancel), "not in flight");
        assert!(f.route(tokens(1, &[1]), t0).unwrap().is_none());
        assert!(f.route(tokens(2, &[1]), t0).unwrap().is_some());
        assert!(matches!(f.route(end(1), t0), Ok(Some(Message::End(_)))));
    }

    #[test]
    fn responses_of_no_request_break_the_protocol() {
        let t0 = Instant::now();
        let mut f = two(t0);
        let echo = ResponseMsg::Echo(virtio_llm::wire::echo::EchoReply {
            request_id: 1,
            data: Vec::new(),
        });
        assert!(matches!(f.route(echo, t0), Err(Broken::Unexpected(_))));
        assert!(matches!(f.route(end(5), t0), Err(Broken::Unexpected(_))));
    }
}
