//! The checks listed in /checks and how each one runs.
//!
//! One check per line: `NAME [timeout=SECS] [KEY=VALUE ...] PROGRAM [ARG ...]`. Words are
//! separated by blanks; `'...'` and `"..."` quote (no escapes inside single quotes, `\"` and
//! `\\` inside double quotes). Blank lines and lines starting with `#` are skipped. A check
//! passes when PROGRAM exits with status 0 within its timeout (default 300 s).

use crate::error::Error;
use crate::sys;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
/// What every check gets in its environment before its own `KEY=VALUE` words.
const BASE_ENV: [(&str, &str); 4] = [
    ("PATH", "/bin:/usr/bin"),
    ("HOME", "/"),
    ("TMPDIR", "/tmp"),
    ("RUST_BACKTRACE", "1"),
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: String,
    pub timeout: Duration,
    pub env: Vec<(String, String)>,
    pub argv: Vec<String>,
}

/// How a check ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    Fail(String),
}

/// Parses the whole checks file; an empty list is an error (nothing would be tested).
pub fn parse(text: &str) -> Result<Vec<Check>, Error> {
    let mut checks: Vec<Check> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let syntax = |why: String| Error::CheckSyntax { line: i + 1, why };
        let words = split_words(line).map_err(syntax)?;
        if words.first().is_none_or(|w| w.starts_with('#')) {
            continue;
        }
        let check = parse_words(words).map_err(syntax)?;
        if checks.iter().any(|c| c.name == check.name) {
            return Err(syntax(format!("check {:?} named twice", check.name)));
        }
        checks.push(check);
    }
    if checks.is_empty() {
        return Err(Error::CheckSyntax {
            line: 0,
            why: "no checks".into(),
        });
    }
    Ok(checks)
}

fn parse_words(words: Vec<String>) -> Result<Check, String> {
    let mut words = words.into_iter();
    let name = words.next().unwrap_or_default();
    let name_ok = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if !name_ok {
        return Err(format!("bad check name {name:?} (letters, digits, . _ -)"));
    }
    let (mut timeout, mut env) = (DEFAULT_TIMEOUT, Vec::new());
    let mut argv = Vec::new();
    for w in words {
        if !argv.is_empty() {
            argv.push(w);
        } else if let Some(secs) = w.strip_prefix("timeout=") {
            let secs: u64 = secs.parse().map_err(|_| format!("bad timeout {secs:?}"))?;
            timeout = Duration::from_secs(secs);
        } else if let Some((k, v)) = w.split_once('=').filter(|(k, _)| is_env_name(k)) {
            env.push((k.to_owned(), v.to_owned()));
        } else {
            argv.push(w);
        }
    }
    if argv.is_empty() {
        return Err(format!("check {name:?} has no command"));
    }
    Ok(Check {
        name,
        timeout,
        env,
        argv,
    })
}

fn is_env_name(k: &str) -> bool {
    let mut chars = k.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Splits a line into words with the quoting described in the module's documentation.
pub fn split_words(line: &str) -> Result<Vec<String>, String> {
    let (mut words, mut word, mut in_word) = (Vec::new(), String::new(), false);
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            ' ' | '\t' => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err("unterminated '".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\')) => word.push(c),
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => return Err("unterminated \"".into()),
                        },
                        Some(c) => word.push(c),
                        None => return Err("unterminated \"".into()),
                    }
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

/// Runs `check` with its output on the console, in its own process group (killed whole at
/// the timeout).
pub fn run(check: &Check) -> Outcome {
    let mut cmd = Command::new(&check.argv[0]);
    cmd.args(&check.argv[1..])
        .env_clear()
        .envs(BASE_ENV)
        .envs(check.env.iter().map(|(k, v)| (k, v)))
        .current_dir("/")
        .stdin(Stdio::null())
        .process_group(0);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return Outcome::Fail(format!("cannot start {}: {e}", check.argv[0])),
    };
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) if start.elapsed() >= check.timeout => {
                sys::kill_group(child.id());
                let _ = child.wait();
                break Err(format!("timed out after {} s", check.timeout.as_secs()));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => break Err(format!("waiting for it: {e}")),
        }
    };
    // Whatever the check left running in its group goes too.
    sys::kill_group(child.id());
    sys::reap_orphans();
    match status {
        Ok(s) if s.success() => Outcome::Pass,
        Ok(s) => Outcome::Fail(describe(s)),
        Err(why) => Outcome::Fail(why),
    }
}

fn describe(s: ExitStatus) -> String {
    match (s.code(), s.signal()) {
        (Some(code), _) => format!("exit status {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => format!("{s}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_quote_and_split() {
        let w = split_words(r#"  run  'a b' "c \"d\" \\ \n" e'f'g  "#).unwrap();
        assert_eq!(w, ["run", "a b", r#"c "d" \ \n"#, "efg"]);
        assert_eq!(split_words("x ''").unwrap(), ["x", ""]);
        assert!(split_words("x 'a").is_err());
        assert!(split_words(r#"x "a\"#).is_err());
    }

    #[test]
    fn lines_give_name_timeout_env_and_argv() {
        let text = "# comment\n\nboot timeout=60 A=1 B_2=x=y /bin/t --exact 'a b' C=3\n";
        let checks = parse(text).unwrap();
        assert_eq!(
            checks,
            [Check {
                name: "boot".into(),
                timeout: Duration::from_secs(60),
                env: vec![("A".into(), "1".into()), ("B_2".into(), "x=y".into())],
                argv: ["/bin/t", "--exact", "a b", "C=3"]
                    .map(String::from)
                    .to_vec(),
            }]
        );
        assert_eq!(parse("k /init").unwrap()[0].timeout, DEFAULT_TIMEOUT);
    }

    #[test]
    fn bad_files_are_refused_with_their_line() {
        for (text, line) in [
            ("", 0),
            ("# only\n", 0),
            ("a /x\nname-only\n", 2),
            ("a timeout=ten /x", 1),
            ("a /x\na /y", 2),
            ("b@d /x", 1),
            ("a 'open", 1),
            ("a X=1", 1),
        ] {
            match parse(text) {
                Err(Error::CheckSyntax { line: l, .. }) => assert_eq!(l, line, "{text:?}"),
                other => panic!("{text:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn runs_pass_on_zero_and_fail_otherwise() {
        let check = |argv: &[&str], secs| Check {
            name: "t".into(),
            timeout: Duration::from_secs(secs),
            env: vec![("V".into(), "7".into())],
            argv: argv.iter().map(|s| s.to_string()).collect(),
        };
        assert_eq!(
            run(&check(&["/bin/sh", "-c", "test $V = 7"], 10)),
            Outcome::Pass
        );
        assert_eq!(
            run(&check(&["/bin/sh", "-c", "exit 3"], 10)),
            Outcome::Fail("exit status 3".into())
        );
        let t = Instant::now();
        assert_eq!(
            run(&check(&["/bin/sh", "-c", "sleep 30"], 1)),
            Outcome::Fail("timed out after 1 s".into())
        );
        assert!(t.elapsed() < Duration::from_secs(10));
        assert!(matches!(
            run(&check(&["/nonexistent"], 1)),
            Outcome::Fail(_)
        ));
    }
}
