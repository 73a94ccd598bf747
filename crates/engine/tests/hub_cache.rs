//! A repo id whose files are all in the Hugging Face cache resolves without any network access.
//! (Own test binary: it sets HF_HOME for the whole process.)

use std::path::PathBuf;

#[test]
fn cached_repo_resolves_offline() {
    let home = std::env::temp_dir().join(format!("gemma-chat-hf-{}", std::process::id()));
    let repo = home.join("hub/models--google--gemma-3n-tiny");
    let snapshot = repo.join("snapshots/0123abcd");
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "0123abcd").unwrap();
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/D/model");
    for entry in std::fs::read_dir(&src).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), snapshot.join(entry.file_name())).unwrap();
    }
    std::env::set_var("HF_HOME", &home);
    // An unreachable endpoint: any download attempt would fail.
    std::env::set_var("HF_ENDPOINT", "http://127.0.0.1:9");
    let dir = engine::resolve_model("google/gemma-3n-tiny", false).unwrap();
    assert_eq!(dir, snapshot);

    // A shard missing from the cache needs the network, which fails with a clear error.
    std::fs::remove_file(snapshot.join("model.safetensors")).unwrap();
    let err = engine::resolve_model("google/gemma-3n-tiny", false).unwrap_err();
    assert!(err.to_string().contains("download"), "{err}");
    std::fs::remove_dir_all(&home).ok();
}
