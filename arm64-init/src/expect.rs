//! `arm64-init expect-output FILE PROGRAM [ARG ...]`: runs PROGRAM (stderr to the console)
//! and succeeds when it exits with 0 and its stdout equals FILE byte for byte.

use crate::error::Error;
use std::process::{Command, Stdio};

/// The subcommand; Ok(true) when the output matched.
pub fn run(args: &[String]) -> Result<bool, Error> {
    let [file, program, rest @ ..] = args else {
        return Err(Error::Usage("expect-output FILE PROGRAM [ARG ...]"));
    };
    let expected = std::fs::read(file).map_err(|source| Error::Read {
        path: file.clone(),
        source,
    })?;
    let out = Command::new(program)
        .args(rest)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|source| Error::Spawn {
            program: program.clone(),
            source,
        })?;
    if !out.status.success() {
        println!("expect-output: {program} failed ({})", out.status);
        return Ok(false);
    }
    match first_difference(&expected, &out.stdout) {
        None => {
            println!("expect-output: {} bytes equal to {file}", expected.len());
            Ok(true)
        }
        Some(at) => {
            println!(
                "expect-output: output ({} bytes) differs from {file} ({} bytes) at byte {at}:\n  \
                 expected ...{:?}\n  got      ...{:?}",
                out.stdout.len(),
                expected.len(),
                excerpt(&expected, at),
                excerpt(&out.stdout, at),
            );
            Ok(false)
        }
    }
}

/// The offset of the first byte where `a` and `b` differ (a shorter one differs where it
/// ends); None when they are equal.
pub fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    let common = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    (common < a.len().max(b.len())).then_some(common)
}

/// Up to 40 bytes either side of `at`, as text.
fn excerpt(s: &[u8], at: usize) -> String {
    let lo = at.saturating_sub(40).min(s.len());
    let hi = (at + 40).min(s.len());
    String::from_utf8_lossy(&s[lo..hi]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_are_found_where_they_start() {
        assert_eq!(first_difference(b"abc", b"abc"), None);
        assert_eq!(first_difference(b"", b""), None);
        assert_eq!(first_difference(b"abc", b"abd"), Some(2));
        assert_eq!(first_difference(b"abc", b"ab"), Some(2));
        assert_eq!(first_difference(b"", b"x"), Some(0));
    }

    #[test]
    fn output_is_compared_byte_for_byte() {
        let dir = std::env::temp_dir().join(format!("arm64-init-expect-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("want");
        std::fs::write(&file, "hi\n").unwrap();
        let f = file.to_string_lossy().into_owned();
        let args = |cmd: &str| [f.clone(), "/bin/sh".into(), "-c".into(), cmd.into()];
        assert!(run(&args("echo hi")).unwrap());
        assert!(!run(&args("printf hi")).unwrap());
        assert!(!run(&args("echo hi; exit 1")).unwrap());
        assert!(run(&["/nonexistent".into(), "/bin/true".into()]).is_err());
        assert!(matches!(run(&[f]), Err(Error::Usage(_))));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
