//! Inputs the fuzzer (fuzz/, scripts/fuzz.sh) found crashing or exhausting memory, kept so that
//! the fixes stay in place: each must now be refused with an error.

use std::path::Path;

use gemma3n::Checkpoint;

#[test]
fn damaged_gguf_headers_are_refused_without_huge_allocations_or_panics() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_inputs/gguf");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let err = Checkpoint::open(&path).expect_err("a damaged GGUF must not open");
        let text = err.to_string();
        assert!(text.contains(&*path.to_string_lossy()), "{text}");
        seen += 1;
    }
    assert_eq!(seen, 8);
}
