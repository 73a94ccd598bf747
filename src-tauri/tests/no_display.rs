//! The desktop binary started with no display says so in one line and exits, without a panic.

use std::process::Command;

#[test]
fn without_a_display_it_says_so_and_points_to_the_cli() {
    let out = Command::new(env!("CARGO_BIN_EXE_gemma-chat-desktop"))
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY")
        // Where a test machine's log and data would otherwise go: nowhere, it must stop first.
        .env("GEMMA_CHAT_DATA_DIR", "/nonexistent/gemma-chat-test")
        .env("GEMMA_CHAT_LOG_DIR", "/nonexistent/gemma-chat-test")
        .output()
        .expect("running the desktop binary");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(!stderr.contains("panicked"), "stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line, got: {stderr}");
    assert!(
        lines[0].starts_with("Gemma Chat needs a graphical display and found none (DISPLAY and WAYLAND_DISPLAY are unset)"),
        "{stderr}"
    );
    assert!(lines[0].contains("`gemma-chat chat --model M`"), "{stderr}");
    assert!(
        lines[0].contains("`gemma-chat serve --model M`"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
}
