fn main() {
    // App commands get `allow-<name>` permissions; the capability file grants only these.
    let commands = &[
        "model_status",
        "open_model",
        "models_overview",
        "save_token",
        "forget_token",
        "download_model",
        "cancel_download",
        "set_load_settings",
        "list_conversations",
        "create_conversation",
        "rename_conversation",
        "delete_conversation",
        "get_conversation",
        "set_system_prompt",
        "set_sampling",
        "save_attachment",
        "read_attachment",
        "send_message",
        "regenerate",
        "edit_and_resend",
        "stop_generation",
        "export_conversation",
        "start_recording",
        "stop_recording",
        "cancel_recording",
        "api_server_status",
        "set_api_server",
    ];
    tauri_build::try_build(
        tauri_build::Attributes::new()
            .app_manifest(tauri_build::AppManifest::new().commands(commands)),
    )
    .expect("tauri build step");
}
