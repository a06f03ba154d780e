//! Every routing file shipped in config/ must pass the checks (stage two included), so the
//! examples in the README never rot. Environment variables are supplied by the test.

use std::path::Path;

use kmirror::config::Config;

fn env(name: &str) -> Option<String> {
    Some(match name {
        n if n.ends_with("BOOTSTRAP")
            || n.starts_with("KMIRROR_DEMO_S")
            || n.starts_with("KMIRROR_DEMO_T") =>
        {
            "127.0.0.1:9092".to_string()
        }
        "KMIRROR_DEMO_DIR" => std::env::temp_dir().display().to_string(),
        _ => "value".to_string(),
    })
}

#[test]
fn shipped_routing_files_are_valid() {
    let mut checked = 0;
    for entry in std::fs::read_dir("config").unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let text = std::fs::read_to_string(&path).unwrap();
            let cfg = Config::from_str(Path::new(&path), text, &env)
                .unwrap_or_else(|e| panic!("{} is invalid:\n{e}", path.display()));
            assert!(!cfg.routes.is_empty(), "{}", path.display());
            checked += 1;
        }
    }
    assert!(
        checked >= 5,
        "expected the shipped examples, found {checked}"
    );
}

#[test]
fn reference_secrets_are_redacted() {
    let text = std::fs::read_to_string("config/reference.toml").unwrap();
    let cfg = Config::from_str(Path::new("config/reference.toml"), text, &|k| {
        (k == "TARGET_PASSWORD")
            .then(|| "hunter2".to_string())
            .or_else(|| env(k))
    })
    .unwrap();
    let target = &cfg.clusters["target"];
    assert_eq!(
        target.properties["sasl.password"], "hunter2",
        "passed to librdkafka as given"
    );
    let shown = format!("{target:?} {:?}", target.redacted_properties());
    assert!(!shown.contains("hunter2"), "secret printed: {shown}");
    assert!(shown.contains("******"));
}
