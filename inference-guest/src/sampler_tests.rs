use super::*;
use alloc::vec;

fn logits() -> Vec<f32> {
    vec![0.5, 2.0, -1.0, 3.0, 3.0, 1.5, 0.0, -3.0]
}

#[test]
fn greedy_takes_argmax_lowest_id_on_ties() {
    let mut s = Sampler::new(SamplerConfig::greedy(), 8);
    assert_eq!(s.sample(&mut logits(), &[]), 3);
}

#[test]
fn same_seed_same_tokens() {
    let cfg = SamplerConfig {
        top_k: 0,
        top_p: 1.0,
        min_p: 0.0,
        temperature: 1.5,
        ..Default::default()
    };
    let run = || {
        let mut s = Sampler::new(cfg, 8);
        (0..50)
            .map(|_| s.sample(&mut logits(), &[]))
            .collect::<Vec<_>>()
    };
    let a = run();
    assert_eq!(a, run());
    assert!(
        a.iter().any(|&t| t != a[0]),
        "temperature 1.5 should not always pick one token"
    );
}

#[test]
fn top_k_one_and_tiny_top_p_are_greedy() {
    for cfg in [
        SamplerConfig {
            top_k: 1,
            temperature: 2.0,
            ..Default::default()
        },
        SamplerConfig {
            top_k: 0,
            top_p: 1e-6,
            min_p: 0.0,
            temperature: 2.0,
            ..Default::default()
        },
    ] {
        let mut s = Sampler::new(cfg, 8);
        for _ in 0..20 {
            assert_eq!(s.sample(&mut logits(), &[]), 3);
        }
    }
}

#[test]
fn repetition_penalty_lowers_repeated_tokens() {
    let cfg = SamplerConfig {
        repeat_penalty: 2.0,
        ..SamplerConfig::greedy()
    };
    let mut s = Sampler::new(cfg, 8);
    let mut l = logits();
    // Tokens 3 and 4 share the top logit; penalising both leaves token 1 on top.
    assert_eq!(s.sample(&mut l, &[3, 4, 3]), 1);
    assert_eq!(l[3], 1.5);
    assert_eq!(l[2], -1.0);
    let mut l = logits();
    s.sample(&mut l, &[2]);
    assert_eq!(l[2], -2.0, "negative logits are multiplied");
}

#[test]
fn temperature_sampling_follows_softmax() {
    // Seeded, so this cannot flake; the bound is ~4x the 99.9% chi-square quantile for 3 dof.
    let base = [1.0f32, 0.0, -1.0, 0.5];
    let cfg = SamplerConfig {
        top_k: 0,
        top_p: 1.0,
        min_p: 0.0,
        temperature: 1.0,
        seed: 7,
        ..Default::default()
    };
    let mut s = Sampler::new(cfg, 4);
    let n = 20_000;
    let mut counts = [0usize; 4];
    for _ in 0..n {
        counts[s.sample(&mut base.clone(), &[]) as usize] += 1;
    }
    let z: f64 = base.iter().map(|&l| exp64(f64::from(l))).sum();
    let chi2: f64 = base
        .iter()
        .zip(counts)
        .map(|(&l, c)| {
            let e = n as f64 * exp64(f64::from(l)) / z;
            (c as f64 - e) * (c as f64 - e) / e
        })
        .sum();
    assert!(chi2 < 60.0, "chi2 = {chi2}, counts = {counts:?}");
}

#[test]
fn min_p_drops_unlikely_tokens() {
    let cfg = SamplerConfig {
        top_k: 0,
        top_p: 1.0,
        min_p: 0.5,
        temperature: 1.0,
        ..Default::default()
    };
    let mut s = Sampler::new(cfg, 3);
    for _ in 0..200 {
        // p(1)/p(0) = e^-3 < 0.5: only token 0 survives.
        assert_eq!(s.sample(&mut [5.0, 2.0, -4.0], &[]), 0);
    }
}

#[test]
fn invalid_configs_are_named() {
    let bad = |cfg: SamplerConfig| cfg.validate().unwrap_err();
    let d = SamplerConfig::default();
    assert_eq!(
        bad(SamplerConfig {
            temperature: -1.0,
            ..d
        }),
        SamplerError::Temperature(-1.0)
    );
    assert!(matches!(
        bad(SamplerConfig {
            temperature: f32::NAN,
            ..d
        }),
        SamplerError::Temperature(_)
    ));
    assert_eq!(
        bad(SamplerConfig { top_p: 0.0, ..d }),
        SamplerError::TopP(0.0)
    );
    assert_eq!(
        bad(SamplerConfig { top_p: 1.5, ..d }),
        SamplerError::TopP(1.5)
    );
    assert_eq!(
        bad(SamplerConfig { min_p: -0.1, ..d }),
        SamplerError::MinP(-0.1)
    );
    assert_eq!(
        bad(SamplerConfig {
            repeat_penalty: 0.0,
            ..d
        }),
        SamplerError::RepeatPenalty(0.0)
    );
    // An invalid config still builds a sampler, with neutral fallbacks.
    let mut s = Sampler::new(
        SamplerConfig {
            temperature: -1.0,
            top_p: 9.0,
            ..d
        },
        8,
    );
    assert_eq!(s.sample(&mut logits(), &[]), 3);
}

#[test]
fn odd_inputs_do_not_panic() {
    let mut s = Sampler::new(SamplerConfig::default(), 4);
    assert_eq!(s.sample(&mut [], &[]), 0);
    let t = s.sample(&mut [f32::NAN, f32::NEG_INFINITY, 1.0, f32::NAN], &[99, 2]);
    assert_eq!(t, 2);
    let tiny = SamplerConfig {
        temperature: 1e-45,
        ..SamplerConfig::default()
    };
    assert_eq!(Sampler::new(tiny, 8).sample(&mut logits(), &[]), 3);
    let mut all_inf = [f32::NEG_INFINITY; 4];
    assert!(s.sample(&mut all_inf, &[]) < 4);
}

#[cfg(feature = "std")]
#[test]
fn exp_and_ln_are_accurate() {
    for x in [-20.0, -3.3, -0.5, 0.0, 0.7, 5.0] {
        let rel = (exp64(x) - std::f64::consts::E.powf(x)).abs() / std::f64::consts::E.powf(x);
        assert!(rel < 1e-12, "exp({x})");
    }
    assert!((libm_ln(0.05) - 0.05f32.ln()).abs() < 1e-5);
}

#[test]
fn presence_and_frequency_penalties_follow_llama_cpp() {
    let cfg = SamplerConfig {
        presence_penalty: 0.5,
        frequency_penalty: 0.25,
        repeat_penalty: 2.0,
        ..SamplerConfig::greedy()
    };
    let mut s = Sampler::new(cfg, 8);
    let mut l = logits();
    // Token 3 three times, token 2 once, token 6 outside the window of 4.
    let recent = [6, 3, 3, 2, 3];
    let cfg4 = SamplerConfig {
        repeat_last_n: 4,
        ..cfg
    };
    let mut s4 = Sampler::new(cfg4, 8);
    s4.sample(&mut l, &recent);
    // 3.0 / 2 - (3 × 0.25 + 0.5); -1.0 × 2 - (0.25 + 0.5); token 6 untouched.
    assert_eq!(l[3], 1.5 - 1.25);
    assert_eq!(l[2], -2.0 - 0.75);
    assert_eq!(l[6], 0.0);
    assert_eq!(l[4], 3.0, "unseen tokens keep their logits");
    // The greedy choice moves off the penalised token.
    assert_eq!(s.sample(&mut logits(), &[3, 4]), 1);
    // Negative penalties favour what was seen.
    let boost = SamplerConfig {
        presence_penalty: -2.0,
        ..SamplerConfig::greedy()
    };
    assert_eq!(Sampler::new(boost, 8).sample(&mut logits(), &[5]), 5);
}

#[test]
fn logit_bias_adds_bans_and_forces() {
    let mut s = Sampler::new(SamplerConfig::greedy(), 8);
    s.set_logit_bias(&[(3, -100.0), (4, -1.5), (99, 50.0)]);
    let mut l = logits();
    assert_eq!(
        s.sample(&mut l, &[]),
        1,
        "3 banned, 4 lowered below 1's 2.0"
    );
    assert_eq!(l[3], f32::NEG_INFINITY);
    s.set_logit_bias(&[(7, 100.0)]);
    assert_eq!(s.sample(&mut logits(), &[]), 7);
    // A banned token is never drawn at any temperature.
    let mut hot = Sampler::new(
        SamplerConfig {
            temperature: 2.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            ..Default::default()
        },
        8,
    );
    hot.set_logit_bias(&[(3, -100.0), (4, -100.0)]);
    for _ in 0..200 {
        let t = hot.sample(&mut logits(), &[]);
        assert!(t != 3 && t != 4);
    }
}

#[test]
fn logprobs_are_the_shaped_log_softmax() {
    let sink = LogprobSink::default();
    let mut s = Sampler::new(SamplerConfig::greedy(), 8);
    s.record_logprobs(3, sink.clone());
    let t = s.sample(&mut logits(), &[]);
    let lp = sink.borrow_mut().take().unwrap();
    // Greedy: the chosen token is the most likely one reported.
    assert_eq!(t, 3);
    assert_eq!(lp.top[0], (3, lp.logprob));
    assert_eq!(lp.top.iter().map(|p| p.0).collect::<Vec<_>>(), [3, 4, 1]);
    assert!(lp.top.iter().all(|p| p.1 <= 0.0));
    assert!(lp.top.windows(2).all(|w| w[0].1 >= w[1].1));
    // The exact log-softmax.
    let z: f64 = logits().iter().map(|&l| f64::from(l).exp()).sum();
    let want = (3.0 - z.ln()) as f32;
    assert!((lp.logprob - want).abs() < 1e-6, "{} vs {want}", lp.logprob);
    let mass: f32 = lp.top.iter().map(|p| p.1.exp()).sum();
    assert!(mass <= 1.0);
    // After a bias, the shaped distribution: the banned token has none.
    s.set_logit_bias(&[(3, -100.0)]);
    s.record_logprobs(8, sink.clone());
    assert_eq!(s.sample(&mut logits(), &[]), 4);
    let lp = sink.borrow_mut().take().unwrap();
    assert_eq!(lp.top.last().unwrap(), &(3, f32::NEG_INFINITY));
    let all: f64 = lp.top.iter().map(|p| f64::from(p.1).exp()).sum();
    assert!((all - 1.0).abs() < 1e-5, "{all}");
}

#[test]
fn bad_penalties_are_named() {
    let cfg = SamplerConfig {
        presence_penalty: 2.5,
        ..Default::default()
    };
    assert_eq!(cfg.validate(), Err(SamplerError::Penalty(2.5)));
    let cfg = SamplerConfig {
        frequency_penalty: f32::NAN,
        ..Default::default()
    };
    assert!(cfg.validate().is_err());
}

#[test]
fn prior_tokens_fill_the_penalty_window() {
    let cfg = SamplerConfig {
        frequency_penalty: 1.0,
        repeat_last_n: 3,
        ..SamplerConfig::greedy()
    };
    // One run over [3, 4, 4, 1] sees the last three: 4, 4, 1.
    let mut whole = logits();
    Sampler::new(cfg, 8).sample(&mut whole, &[3, 4, 4, 1]);
    // The same context split: [3, 4] before, [4, 1] in this call.
    let mut split = logits();
    let mut s = Sampler::new(cfg, 8);
    s.set_prior_tokens(&[3, 4]);
    s.sample(&mut split, &[4, 1]);
    assert_eq!(whole, split);
    assert_eq!(split[3], 3.0, "token 3 is outside the window");
    assert_eq!(split[4], 1.0);
}
