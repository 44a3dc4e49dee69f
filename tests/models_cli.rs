//! `flexserve models list | show | rm | pull` over a models directory (the release binary;
//! no guest): what each file is, a file that is not a model said to be unreadable, `rm`
//! removing a model's link but refusing a name that is not a model of the directory, `pull`
//! copying a model in only when it is one and has the digest asked for.

use flexserve_e2e::serve_rig::*;
use std::path::Path;
use std::process::{Command, Output};

fn models(bin: &Path, dir: &Path, args: &[&str]) -> Output {
    Command::new(bin)
        .arg("models")
        .arg("--models-dir")
        .arg(dir)
        .args(args)
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn models_are_listed_shown_and_removed() {
    let Some(bin) = flexserve_bin() else {
        return;
    };
    let model = repo().join(format!("models/{TINY}.gguf"));
    if !model.exists() {
        skip(&format!(
            "{} is missing (run `make setup`)",
            model.display()
        ));
        return;
    }
    let dir = temp_dir("models-cli");
    std::os::unix::fs::symlink(&model, dir.join(format!("{TINY}.gguf"))).unwrap();
    std::fs::write(dir.join("broken.gguf"), b"not a model").unwrap();
    std::fs::write(dir.join("notes.txt"), b"not listed").unwrap();

    let list = stdout(&models(&bin, &dir, &["list"]));
    let line = |name: &str| {
        list.lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} in {list}"))
            .to_string()
    };
    assert!(
        line(TINY).contains("Q8_0") && line(TINY).contains("flexserve"),
        "{list}"
    );
    assert!(line("broken").contains("unreadable"), "{list}");
    assert!(!list.contains("notes"), "{list}");

    let show = stdout(&models(&bin, &dir, &["show", TINY]));
    assert!(show.contains("quantization    Q8_0"), "{show}");
    assert!(show.contains("format          gguf"), "{show}");

    for bad in ["no-such-model", "../models/tiny.Q8_0", "notes.txt"] {
        let o = models(&bin, &dir, &["rm", bad]);
        assert!(!o.status.success(), "rm {bad} succeeded");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("no model"), "rm {bad}: {err}");
    }
    assert!(dir.join("notes.txt").exists());
    let rm = stdout(&models(&bin, &dir, &["rm", TINY]));
    assert!(rm.starts_with(&format!("removed {TINY}")), "{rm}");
    assert!(!dir.join(format!("{TINY}.gguf")).exists());
    assert!(model.exists(), "the link goes, not the file it points to");
    let help = stdout(
        &Command::new(&bin)
            .args(["models", "--help"])
            .output()
            .unwrap(),
    );
    assert!(
        help.contains("list") && help.contains("show") && help.contains("rm"),
        "{help}"
    );

    pulls(&bin, &dir, &model);
}

/// `pull`: a copy under a new name with its digest; a wrong digest, a taken name or a file
/// that is not a model leave nothing behind.
fn pulls(bin: &Path, dir: &Path, model: &Path) {
    let src = model.to_str().unwrap();
    let first = stdout(&models(bin, dir, &["pull", src, "--name", "copy"]));
    let digest = first.trim().rsplit(' ').next().unwrap().to_string();
    assert_eq!(digest.len(), 64, "{first}");
    assert_eq!(
        std::fs::read(dir.join("copy.gguf")).unwrap(),
        std::fs::read(model).unwrap()
    );
    let fail = |args: &[&str], needle: &str| {
        let o = models(bin, dir, args);
        assert!(!o.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(needle), "{args:?}: {err}");
    };
    fail(&["pull", src, "--name", "copy"], "already");
    let wrong = "0".repeat(64);
    fail(
        &["pull", src, "--name", "other", "--sha256", &wrong],
        "nothing was kept",
    );
    fail(
        &[
            "pull",
            dir.join("broken.gguf").to_str().unwrap(),
            "--name",
            "b2",
        ],
        "not a model",
    );
    fail(&["pull", src, "--name", "../escape"], "cannot name a model");
    stdout(&models(
        bin,
        dir,
        &["pull", src, "--name", "pinned", "--sha256", &digest],
    ));
    let list = stdout(&models(bin, dir, &["list"]));
    assert!(list.contains("pinned") && list.contains("copy"), "{list}");
    assert!(!list.contains("other") && !list.contains("b2"), "{list}");
    let leftovers: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".part"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert!(stdout(&models(bin, dir, &["show", "pinned"])).contains(&digest));
}
