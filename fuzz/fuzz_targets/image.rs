//! An image file (the input) through the vision preprocessing of fixture C's model: format
//! sniffing, the size limit, decoding, EXIF orientation, the antialiased resize to 160x160 and
//! rescaling.  The pixel limit is lowered so that decompression bombs are refused quickly.
#![no_main]

use std::sync::OnceLock;

use engine::image::ImageProcessor;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    static PROCESSOR: OnceLock<ImageProcessor> = OnceLock::new();
    let processor = PROCESSOR.get_or_init(|| {
        ImageProcessor::from_model_dir(&gemma_chat_fuzz::fixtures().join("C/model"))
            .expect("fixture C has an image processor")
            .with_max_pixels(1 << 22)
    });
    let _ = processor.load_bytes(data, "fuzz input");
});
