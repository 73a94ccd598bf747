//! An audio file (the input) through the audio front end of fixture C's model: symphonia
//! decoding (WAV, MP3, FLAC, OGG/Vorbis, M4A/AAC), downmix, resampling to 16 kHz, splitting into
//! clips and the log-mel features of the first clip (the others take the same path).
#![no_main]

use std::sync::OnceLock;

use engine::audio::AudioProcessor;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    static PROCESSOR: OnceLock<AudioProcessor> = OnceLock::new();
    let processor = PROCESSOR.get_or_init(|| {
        // The decoder turns decoders' panics on malformed headers into errors
        // (`decode_file`); libFuzzer's hook would abort on them even though they are caught.
        // Panics that escape still fail the run: libfuzzer-sys aborts on them itself.
        drop(std::panic::take_hook());
        AudioProcessor::from_model_dir(&gemma_chat_fuzz::fixtures().join("C/model"))
            .expect("fixture C has an audio feature extractor")
    });
    let path = gemma_chat_fuzz::scratch_file("clip", data);
    if let Ok(split) = processor.load(&path) {
        let first: Vec<Vec<f32>> = split.into_samples().into_iter().take(1).collect();
        let _ = processor.features(&first);
    }
});
