//! The configuration file's checks (`config.rs`).

use super::*;

#[test]
fn a_full_file_parses() {
    let c = Config::from_toml(
        r#"
        [listen]
        socket = "/tmp/x.sock"
        socket_mode = "0600"
        tcp = "127.0.0.1:8080"
        [guest]
        vcpus = 1
        memory_max = "1G"
        start = "lazy"
        min_isolation = "none"
        first_token_timeout_seconds = 30
        command_timeout_seconds = 20
        [models]
        dir = "models"
        default = "tiny.Q8_0.gguf"
        context = 512
        [limits]
        queue_depth = 4
        max_tokens = 100
        retry_after_seconds = 2
        max_active = 2
        slice_tokens = 8
        batch = false
        "#,
    )
    .unwrap();
    assert_eq!(c.socket, PathBuf::from("/tmp/x.sock"));
    assert_eq!(c.deadlines.first_token, Some(Duration::from_secs(30)));
    assert_eq!(c.deadlines.command, Some(Duration::from_secs(20)));
    assert_eq!(c.deadlines.between_tokens, None);
    assert_eq!(c.socket_mode, 0o600);
    assert_eq!(c.tcp, Some("127.0.0.1:8080".parse().unwrap()));
    assert_eq!(
        (c.vcpus, c.memory_max, c.start, c.min_isolation),
        (1, 1 << 30, StartMode::Lazy, IsolationLevel::None)
    );
    assert_eq!((c.default_model.as_str(), c.context), ("tiny.Q8_0", 512));
    assert_eq!(
        (c.queue_depth, c.max_tokens, c.retry_after_secs),
        (4, 100, 2)
    );
    assert_eq!((c.max_active, c.slice_tokens, c.batch), (2, 8, false));
    assert!(Config::default().batch, "batching is on by default");
    let e = Config::from_toml("[limits]\nbatch = 1")
        .unwrap_err()
        .to_string();
    assert!(e.contains("batch"), "{e}");
}

#[test]
fn accepted_owners_are_owner_keys() {
    let key = "11".repeat(32);
    let c = Config::from_toml(&format!(
        "[guest]\nkey_root = \"/k\"\n[models]\naccepted_owners = [\"{key}\"]"
    ))
    .unwrap();
    assert_eq!(c.accepted_owners.len(), 1);
    assert_eq!(c.accepted_owners[0].to_string(), key);
    assert_eq!(c.key_root.as_deref(), Some(std::path::Path::new("/k")));
    let e = Config::from_toml("[models]\naccepted_owners = [\"abc\"]")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("models.accepted_owners") && e.contains("64 hex"),
        "{e}"
    );
}

#[test]
fn errors_name_the_key() {
    let err = |t: &str| Config::from_toml(t).unwrap_err().to_string();
    assert!(
        err("[guest]\nvcpu = 2").contains("vcpu"),
        "{}",
        err("[guest]\nvcpu = 2")
    );
    assert!(err("color = 1").contains("color"));
    assert!(err("[guest]\nvcpus = 99").contains("guest.vcpus"));
    assert!(err("[guest]\ntoken_timeout_seconds = 0").contains("guest.token_timeout_seconds"));
    assert!(err("[guest]\nvcpus = \"two\"").contains("vcpus"));
    assert!(err("[guest]\nmemory_max = \"lots\"").contains("guest.memory_max"));
    assert!(err("[guest]\nstart = \"soon\"").contains("guest.start"));
    assert!(err("[guest]\nkv_restore = \"always\"").contains("guest.kv_restore"));
    let e = err("[guest]\nmin_isolation = \"strong\"");
    assert!(
        e.contains("guest.min_isolation") && e.contains("private-memory"),
        "{e}"
    );
    assert!(err("[listen]\ntcp = \"localhost\"").contains("listen.tcp"));
    assert!(err("[listen]\nsocket_mode = \"999\"").contains("listen.socket_mode"));
    assert!(err("[limits]\nqueue_depth = 0").contains("limits.queue_depth"));
    assert!(err("[limits]\nmax_active = 17").contains("limits.max_active"));
    assert!(err("[models]\ndefault = \"../x\"").contains("models.default"));
}

#[test]
fn the_kv_restore_choice_is_measured_unless_forced() {
    assert_eq!(Config::default().kv_restore, KvRestoreMode::Measured);
    for (name, mode) in [
        ("measured", KvRestoreMode::Measured),
        ("restore", KvRestoreMode::Restore),
        ("recompute", KvRestoreMode::Recompute),
    ] {
        let c = Config::from_toml(&format!("[guest]\nkv_restore = \"{name}\"")).unwrap();
        assert_eq!(c.kv_restore, mode);
    }
}

#[test]
fn non_loopback_tcp_needs_consent() {
    let e = Config::from_toml("[listen]\ntcp = \"0.0.0.0:8080\"").unwrap_err();
    assert!(matches!(e, ConfigError::NotLoopback { .. }), "{e}");
    let open = "[listen]\ntcp = \"0.0.0.0:8080\"\nallow_non_loopback = true\n";
    let e = Config::from_toml(open).unwrap_err();
    assert!(matches!(e, ConfigError::NoKeys { .. }), "{e}");
    let key = format!(
        "[[auth.keys]]\nname = \"a\"\nsha256 = \"{}\"\n",
        "00".repeat(32)
    );
    let c = Config::from_toml(&format!("{open}{key}")).unwrap();
    assert!(c.tcp.is_some());
    assert!(Config::from_toml("[listen]\ntcp = \"[::1]:8080\"").is_ok());
}

#[test]
fn flags_override_the_file() {
    let f: FileConfig = toml::from_str("[guest]\nvcpus = 1").unwrap();
    let o = Overrides {
        vcpus: Some(2),
        tcp: Some("127.0.0.1:0".into()),
        ..Overrides::default()
    };
    let c = Config::from_parts(f, &o).unwrap();
    assert_eq!(c.vcpus, 2);
    assert!(c.tcp.is_some());
}
