//! `bench-e2e --mode batch`: continuous batching's decode speed in the guest beside the host
//! engine's `decode_batch` of as many sessions, in one process, rounds alternating. The
//! guest gets `--sessions` requests at once (a new session each, the same prompt rotated
//! per request, as `bench-engine --batch` does); it evaluates their prompts one after
//! another and then steps them together. The guest's figure is the decode window: from the
//! moment every request has streamed its first token to the last request's end, the tokens
//! that came in it over its length. What the guest loses against the host here (the
//! service loop between steps, token messages, vCPU parking) the daemon loses too.

use super::e2e::{
    BenchError, GuestEngine, greedy_request, median, prompt, with_checked_model, with_host_engine,
};
use super::engine::batched_decode;
use crate::cli::BenchE2eArgs;
use crate::model::huge_buffer::Pages;
use inference_guest::model::BatchBuffers;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use vmm::guest_vm::Message;

/// Longest wait for the guest's next message before the round is given up.
const MESSAGE_WAIT: Duration = Duration::from_secs(60);

impl GuestEngine {
    /// One batched round: `sessions` greedy requests of `gen_tokens` tokens each on new
    /// sessions, sent at once. Returns the decode window's tokens per second.
    fn batch_round(
        &mut self,
        ids: &[u32],
        gen_tokens: usize,
        sessions: usize,
    ) -> Result<f64, BenchError> {
        let ctx = (ids.len() + gen_tokens + 1) as u32;
        let first = self.next_session;
        self.next_session += sessions as u32;
        let sids: Vec<u32> = (first..first + sessions as u32).collect();
        // Every session first: the guest answers a control command only between its steps
        // and joins, so opening each just before its request would let the requests in one
        // prefill apart, and the batch would run most steps with fewer sessions than asked.
        for &sid in &sids {
            self.vm.open_session(sid, 1, ctx)?;
        }
        for (i, &sid) in sids.iter().enumerate() {
            let mut own = ids.to_vec();
            own.rotate_left(i % ids.len().max(1));
            self.vm
                .begin_request(&greedy_request(sid, own, gen_tokens))?;
        }
        // Tokens streamed per request; the decode window opens when all have their first.
        let mut streamed: BTreeMap<u64, usize> = BTreeMap::new();
        let (mut window, mut in_window, mut ended) = (None, 0usize, 0usize);
        while ended < sessions {
            let msg = self
                .vm
                .next_message(MESSAGE_WAIT)?
                .ok_or(BenchError::Stalled(MESSAGE_WAIT))?;
            match msg {
                Message::Tokens(t) => {
                    if window.is_some() {
                        in_window += t.token_ids.len();
                    }
                    *streamed.entry(t.request_id).or_default() += t.token_ids.len();
                    if window.is_none() && streamed.len() == sessions {
                        window = Some(Instant::now());
                    }
                }
                Message::End(_) => ended += 1,
                Message::Failed { error, .. } => return Err(error.into()),
            }
        }
        let secs = window.map_or(f64::NAN, |w| w.elapsed().as_secs_f64());
        for sid in sids {
            self.vm.close_session(sid)?;
        }
        Ok(in_window as f64 / secs)
    }
}

/// Runs `--mode batch` and prints one JSON object.
pub(super) fn run(args: &BenchE2eArgs) -> Result<(), BenchError> {
    let n = args.sessions;
    with_checked_model(args, |model, n_vocab| {
        let (mut guest, _) = GuestEngine::start(args, model, n)?;
        let fields = guest.row_fields();
        let ids = prompt(args.prompt_tokens, n_vocab);
        let (g, h) = with_host_engine(args, Pages::Huge, |host, _| {
            let ctx = args.prompt_tokens + args.gen_tokens + 1;
            let mut sessions: Vec<_> = (0..n).map(|_| host.model.new_session(ctx)).collect();
            let mut scratch = BatchBuffers::default();
            let (mut g, mut h) = (Vec::new(), Vec::new());
            for rep in 0..=args.warm_reps {
                let gt = guest.batch_round(&ids, args.gen_tokens, n)?;
                let ht = batched_decode(
                    &host.model,
                    &host.pool,
                    &mut sessions,
                    &ids,
                    args.gen_tokens,
                    &mut scratch,
                )?;
                // The first round warms caches, pools and the guest's pages: not counted.
                if rep > 0 {
                    eprintln!("round {rep}: guest {gt:.1} tok/s, host {ht:.1} tok/s");
                    g.push(gt);
                    h.push(ht);
                }
            }
            Ok((median(&g), median(&h)))
        })?;
        guest.vm.shutdown()?;
        println!(
            "{{\"mode\":\"batch\",{fields},\"sessions\":{n},\"prompt_tokens\":{},\"gen_tokens\":{},\
\"guest_decode_tps\":{g:.1},\"host_decode_tps\":{h:.1},\"guest_over_host\":{:.3}}}",
            args.prompt_tokens,
            args.gen_tokens,
            g / h
        );
        Ok(())
    })
}
