//! How long a model stays resident in the guest after its last request (`models.keep_alive`
//! and a request's `keep_alive`, with Ollama's syntax): a duration like `"5m"`, `"30s"`,
//! `"1h30m"` or `"250ms"`, or a number of seconds; `0` unloads the model as soon as its
//! request ends, a negative value keeps it for ever. When no model is resident the worker
//! stops the guest, so an idle daemon holds no guest memory.

use serde::Deserialize;
use serde_json::Value;
use std::time::{Duration, Instant};

/// How long an idle model stays resident.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeepAlive {
    /// Until it is pushed out to make room (or the daemon stops).
    Forever,
    /// This long after its last request ended (zero: unloaded right after it).
    For(Duration),
}

impl Default for KeepAlive {
    /// Ollama's default: five minutes.
    fn default() -> Self {
        KeepAlive::For(Duration::from_secs(5 * 60))
    }
}

impl std::fmt::Display for KeepAlive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeepAlive::Forever => f.write_str("forever"),
            KeepAlive::For(d) if d.subsec_nanos() == 0 => write!(f, "{}s", d.as_secs()),
            KeepAlive::For(d) => write!(f, "{}ms", d.as_millis()),
        }
    }
}

impl KeepAlive {
    /// Whether a model idle since `since` with this keep-alive has expired at `now`.
    pub fn expired(self, since: Instant, now: Instant) -> bool {
        match self {
            KeepAlive::Forever => false,
            KeepAlive::For(d) => now.saturating_duration_since(since) >= d,
        }
    }

    /// A number of seconds: negative is for ever.
    pub fn from_seconds(s: f64) -> Result<Self, String> {
        if s.is_nan() {
            return Err("is not a number".into());
        }
        if s < 0.0 {
            return Ok(KeepAlive::Forever);
        }
        Duration::try_from_secs_f64(s)
            .map(KeepAlive::For)
            .map_err(|_| format!("{s} seconds is too long (use a negative value for ever)"))
    }
}

/// A keep-alive as the config file gives it: a string or a number.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum KeepAliveSetting {
    Text(String),
    Int(i64),
    Float(f64),
}

impl KeepAliveSetting {
    pub fn parse(&self) -> Result<KeepAlive, String> {
        match self {
            KeepAliveSetting::Text(s) => parse(s),
            KeepAliveSetting::Int(i) => KeepAlive::from_seconds(*i as f64),
            KeepAliveSetting::Float(f) => KeepAlive::from_seconds(*f),
        }
    }
}

/// A request's `keep_alive` value: a duration string or a number of seconds.
pub fn from_json(v: &Value) -> Result<KeepAlive, String> {
    match v {
        Value::String(s) => parse(s),
        Value::Number(n) => n
            .as_f64()
            .ok_or_else(|| format!("{n} is not a number of seconds"))
            .and_then(KeepAlive::from_seconds),
        _ => Err("must be a duration like \"5m\" or a number of seconds".into()),
    }
}

const UNITS: [(&str, f64); 8] = [
    ("ns", 1e-9),
    ("us", 1e-6),
    ("µs", 1e-6),
    ("μs", 1e-6),
    ("ms", 1e-3),
    ("s", 1.0),
    ("m", 60.0),
    ("h", 3600.0),
];

/// Parses Go's duration syntax as Ollama takes it (`"5m"`, `"1h30m"`, `"-1m"`, `"0"`), or a
/// bare number of seconds (`"300"`, as Ollama's `OLLAMA_KEEP_ALIVE` takes it).
pub fn parse(text: &str) -> Result<KeepAlive, String> {
    let bad = || format!("{text:?} is not a duration like \"5m\", \"30s\" or \"1h\"");
    let s = text.trim();
    if let Ok(n) = s.parse::<f64>() {
        return KeepAlive::from_seconds(n).map_err(|e| format!("{text:?}: {e}"));
    }
    let (negative, mut rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    if rest.is_empty() {
        return Err(bad());
    }
    let mut seconds = 0.0;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let value: f64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        let scale = UNITS
            .iter()
            .find(|(u, _)| *u == unit)
            .map(|(_, scale)| *scale)
            .ok_or_else(bad)?;
        seconds += value * scale;
        rest = &rest[unit_len..];
    }
    if negative && seconds > 0.0 {
        return Ok(KeepAlive::Forever);
    }
    KeepAlive::from_seconds(seconds).map_err(|e| format!("{text:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn secs(s: u64) -> KeepAlive {
        KeepAlive::For(Duration::from_secs(s))
    }

    #[test]
    fn durations_parse_as_ollama_takes_them() {
        assert_eq!(parse("5m"), Ok(secs(300)));
        assert_eq!(parse("30s"), Ok(secs(30)));
        assert_eq!(parse("1h"), Ok(secs(3600)));
        assert_eq!(parse("1h30m"), Ok(secs(5400)));
        assert_eq!(parse("1.5m"), Ok(secs(90)));
        assert_eq!(
            parse("250ms"),
            Ok(KeepAlive::For(Duration::from_millis(250)))
        );
        assert_eq!(parse("0"), Ok(secs(0)));
        assert_eq!(parse("0s"), Ok(secs(0)));
        assert_eq!(parse("300"), Ok(secs(300)));
        assert_eq!(parse("-1"), Ok(KeepAlive::Forever));
        assert_eq!(parse("-1m"), Ok(KeepAlive::Forever));
        assert_eq!(parse(" 10s "), Ok(secs(10)));
    }

    #[test]
    fn bad_durations_are_refused() {
        for bad in [
            "", "-", "m", "5x", "5 m", "1d", "m5", "1..5s", "5m3", "5mm", "NaN", "1e400",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn json_and_config_values_take_strings_and_numbers() {
        assert_eq!(from_json(&json!("2m")), Ok(secs(120)));
        assert_eq!(from_json(&json!(0)), Ok(secs(0)));
        assert_eq!(from_json(&json!(45)), Ok(secs(45)));
        assert_eq!(
            from_json(&json!(0.5)),
            Ok(KeepAlive::For(Duration::from_millis(500)))
        );
        assert_eq!(from_json(&json!(-1)), Ok(KeepAlive::Forever));
        assert!(from_json(&json!(true)).is_err());
        assert!(from_json(&json!([1])).is_err());
        assert!(from_json(&json!("soon")).is_err());
        assert_eq!(KeepAliveSetting::Int(-1).parse(), Ok(KeepAlive::Forever));
        assert_eq!(KeepAliveSetting::Float(1.0).parse(), Ok(secs(1)));
        assert_eq!(KeepAliveSetting::Text("1h".into()).parse(), Ok(secs(3600)));
        assert_eq!(KeepAlive::default(), secs(300));
        let shown = |k: KeepAlive| k.to_string();
        assert_eq!(shown(secs(0)), "0s");
        assert_eq!(shown(KeepAlive::For(Duration::from_millis(200))), "200ms");
        assert_eq!(shown(KeepAlive::Forever), "forever");
    }

    #[test]
    fn a_keep_alive_expires_once_its_time_has_passed() {
        let t0 = Instant::now();
        let later = |s: u64| t0 + Duration::from_secs(s);
        assert!(secs(0).expired(t0, t0));
        assert!(!secs(300).expired(t0, later(299)));
        assert!(secs(300).expired(t0, later(300)));
        assert!(!KeepAlive::Forever.expired(t0, later(1 << 30)));
        // A clock that went backwards (`since` after `now`) counts as no time passed.
        assert!(!secs(1).expired(later(5), t0));
    }

    #[test]
    fn the_config_key_takes_both_forms_and_names_itself_when_bad() {
        use crate::serve::config::Config;
        let keep = |t: &str| Config::from_toml(t).map(|c| c.keep_alive);
        assert_eq!(keep("").unwrap(), secs(300));
        assert_eq!(keep("[models]\nkeep_alive = \"30s\"").unwrap(), secs(30));
        assert_eq!(keep("[models]\nkeep_alive = 0").unwrap(), secs(0));
        assert_eq!(
            keep("[models]\nkeep_alive = -1").unwrap(),
            KeepAlive::Forever
        );
        assert_eq!(
            keep("[models]\nkeep_alive = 2.5").unwrap(),
            KeepAlive::For(Duration::from_millis(2500))
        );
        let e = keep("[models]\nkeep_alive = \"soon\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("models.keep_alive"), "{e}");
        assert!(keep("[models]\nkeep_alive = true").is_err());
    }
}
