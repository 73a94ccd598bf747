//! Image preprocessing: pixel values against the reference processor, every supported format,
//! EXIF orientation, and clear errors for files that are not usable images.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use candle_core::Tensor;
use engine::image::ImageProcessor;
use engine::Error;
use fixtures::{fixture_dir, max_abs_diff, Golden};
use image::{ImageEncoder, ImageFormat, RgbImage, RgbaImage};

fn processor(variant: &str) -> ImageProcessor {
    ImageProcessor::from_model_dir(&fixture_dir(variant).join("model")).expect("processor config")
}

/// A scratch folder for generated files, unique per test.
fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gemma-image-tests-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn expect_image_error(result: engine::Result<Tensor>, needle: &str) -> String {
    match result {
        Err(e @ Error::Image { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.to_lowercase().contains(needle),
                "error {msg:?} should mention {needle:?}"
            );
            msg
        }
        Err(e) => panic!("expected an image error, got {e}"),
        Ok(t) => panic!("expected an error, got pixel values {:?}", t.dims()),
    }
}

#[test]
fn pixel_values_match_reference() {
    for variant in ["C", "D"] {
        let proc = processor(variant);
        let dir = fixture_dir(variant);
        for (file, key, tol) in [
            ("image.png", "image.pixel_values", 1e-6),
            ("image_exact.png", "image_exact.pixel_values", 1e-7),
        ] {
            let px = proc
                .load_file(&dir.join(file))
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            let d = max_abs_diff(&px, &Golden::open(variant).f32(key));
            eprintln!("{variant} {file}: max abs diff {d:.3e}");
            assert!(d <= tol, "{variant} {file}: {d} > {tol}");
        }
    }
}

#[test]
fn other_formats_decode_to_the_same_pixels() {
    let proc = processor("C");
    let png = std::fs::read(fixture_dir("C").join("image.png")).unwrap();
    let reference = proc.load_bytes(&png, "image.png").unwrap();
    let img = image::load_from_memory(&png).unwrap();
    for format in [ImageFormat::Bmp, ImageFormat::WebP] {
        let mut bytes = Vec::new();
        img.write_to(&mut Cursor::new(&mut bytes), format).unwrap();
        let px = proc.load_bytes(&bytes, "converted").unwrap();
        assert_eq!(max_abs_diff(&px, &reference), 0.0, "{format:?}");
    }
    // JPEG and GIF are lossy: they decode, to the right shape and close to the original.
    for format in [ImageFormat::Jpeg, ImageFormat::Gif] {
        let mut bytes = Vec::new();
        let img = if format == ImageFormat::Gif {
            image::DynamicImage::ImageRgba8(img.to_rgba8())
        } else {
            img.clone()
        };
        img.write_to(&mut Cursor::new(&mut bytes), format).unwrap();
        let px = proc.load_bytes(&bytes, "converted").unwrap();
        assert_eq!(px.dims(), reference.dims());
        let mean_diff = (px - &reference)
            .unwrap()
            .abs()
            .unwrap()
            .mean_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(mean_diff < 0.05, "{format:?}: mean diff {mean_diff}");
    }
}

/// A processor that keeps the decoded size, to observe orientation and alpha handling.
fn unresized_processor(dir: &Path) -> ImageProcessor {
    std::fs::write(
        dir.join("preprocessor_config.json"),
        r#"{"do_resize": false, "do_rescale": true, "rescale_factor": 0.00392156862745098, "do_normalize": false}"#,
    )
    .unwrap();
    ImageProcessor::from_model_dir(dir).unwrap()
}

#[test]
fn exif_orientation_is_applied() {
    let dir = scratch("exif");
    let proc = unresized_processor(&dir);
    // 3 wide, 2 high; the top-left pixel is red.
    let mut img = RgbImage::new(3, 2);
    img.put_pixel(0, 0, image::Rgb([255, 0, 0]));
    // TIFF header + one IFD entry: Orientation (0x0112) = 6, "rotate 90° clockwise to display".
    let exif: Vec<u8> = vec![
        b'I', b'I', 0x2A, 0, 8, 0, 0, 0, 1, 0, 0x12, 0x01, 3, 0, 1, 0, 0, 0, 6, 0, 0, 0, 0, 0, 0, 0,
    ];
    let mut bytes = Vec::new();
    let mut encoder = image::codecs::png::PngEncoder::new(&mut bytes);
    encoder.set_exif_metadata(exif).unwrap();
    encoder
        .write_image(img.as_raw(), 3, 2, image::ExtendedColorType::Rgb8)
        .unwrap();
    let px = proc.load_bytes(&bytes, "rotated.png").unwrap();
    assert_eq!(px.dims(), [3, 3, 2], "upright image is 2 wide, 3 high");
    // After a clockwise quarter turn the red pixel is at the top right.
    let red: Vec<f32> = px.get(0).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(red, [0.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
}

#[test]
fn alpha_is_dropped_and_grey_is_expanded() {
    let dir = scratch("alpha");
    let proc = unresized_processor(&dir);
    let rgba = RgbaImage::from_pixel(2, 2, image::Rgba([200, 100, 50, 0]));
    let mut bytes = Vec::new();
    image::DynamicImage::ImageRgba8(rgba)
        .write_to(&mut Cursor::new(&mut bytes), ImageFormat::Png)
        .unwrap();
    let px = proc.load_bytes(&bytes, "transparent.png").unwrap();
    let values: Vec<f32> = px.flatten_all().unwrap().to_vec1().unwrap();
    let scale = 1.0f32 / 255.0;
    assert_eq!(values[0], 200.0 * scale);
    assert_eq!(values[4], 100.0 * scale);
    assert_eq!(values[8], 50.0 * scale);

    let grey = image::GrayImage::from_pixel(2, 2, image::Luma([77]));
    let mut bytes = Vec::new();
    image::DynamicImage::ImageLuma8(grey)
        .write_to(&mut Cursor::new(&mut bytes), ImageFormat::Png)
        .unwrap();
    let px = proc.load_bytes(&bytes, "grey.png").unwrap();
    assert_eq!(px.dims(), [3, 2, 2]);
    assert!(px
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .all(|&v| v == 77.0 * scale));
}

/// CRC-32 (IEEE) of a PNG chunk's type and data.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let mut body = kind.to_vec();
    body.extend_from_slice(data);
    out.extend_from_slice(&body);
    out.extend_from_slice(&crc32(&body).to_be_bytes());
}

/// A PNG whose header declares `width`×`height` RGB pixels, with a token IDAT.
fn png_declaring(width: u32, height: u32) -> Vec<u8> {
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    png_chunk(&mut png, b"IHDR", &ihdr);
    png_chunk(
        &mut png,
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    );
    png_chunk(&mut png, b"IEND", &[]);
    png
}

#[test]
fn decompression_bomb_is_refused_before_decoding() {
    let proc = processor("C");
    let dir = scratch("bomb");
    let path = dir.join("bomb.png");
    std::fs::write(&path, png_declaring(50_000, 50_000)).unwrap();
    let msg = expect_image_error(proc.load_file(&path), "megapixels");
    assert!(msg.contains("bomb.png"), "{msg}");
}

#[test]
fn zero_sized_images_are_refused() {
    let proc = processor("C");
    let dir = scratch("zero");
    let path = dir.join("zero.png");
    std::fs::write(&path, png_declaring(0, 10)).unwrap();
    assert!(matches!(proc.load_file(&path), Err(Error::Image { .. })));
    let empty = dir.join("empty.jpg");
    std::fs::write(&empty, b"").unwrap();
    expect_image_error(proc.load_file(&empty), "not a supported image");
}

#[test]
fn truncated_and_corrupt_files_are_refused() {
    let proc = processor("C");
    let dir = scratch("broken");
    let png = std::fs::read(fixture_dir("C").join("image.png")).unwrap();

    let truncated = dir.join("truncated.png");
    std::fs::write(&truncated, &png[..png.len() / 2]).unwrap();
    expect_image_error(proc.load_file(&truncated), "decode");

    let mut corrupt = png.clone();
    let middle = corrupt.len() / 2;
    corrupt[middle..middle + 64]
        .iter_mut()
        .for_each(|b| *b = !*b);
    let corrupt_path = dir.join("corrupt.png");
    std::fs::write(&corrupt_path, &corrupt).unwrap();
    expect_image_error(proc.load_file(&corrupt_path), "decode");

    let mut jpeg = Vec::new();
    image::load_from_memory(&png)
        .unwrap()
        .write_to(&mut Cursor::new(&mut jpeg), ImageFormat::Jpeg)
        .unwrap();
    expect_image_error(
        proc.load_bytes(&jpeg[..jpeg.len() / 3], "cut.jpg"),
        "decode",
    );
}

#[test]
fn non_images_are_refused() {
    let proc = processor("C");
    let dir = scratch("nonimage");
    let text = dir.join("notes.png");
    std::fs::write(&text, "this is a text file with an image extension\n").unwrap();
    expect_image_error(proc.load_file(&text), "not a supported image");
    expect_image_error(proc.load_file(&dir.join("missing.png")), "cannot open");
}

#[test]
fn large_photo_is_handled() {
    let proc = processor("C");
    let img = RgbImage::from_fn(6000, 4000, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x + y) % 256) as u8])
    });
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 80)
        .write_image(img.as_raw(), 6000, 4000, image::ExtendedColorType::Rgb8)
        .unwrap();
    drop(img);
    let px = proc.load_bytes(&jpeg, "photo.jpg").unwrap();
    assert_eq!(px.dims(), [3, 160, 160]);
    let max: f32 = px
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap();
    assert!((0.0..=1.0).contains(&max));
}

#[test]
fn missing_processor_config_is_reported() {
    let dir = scratch("noconfig");
    let err = ImageProcessor::from_model_dir(&dir)
        .unwrap_err()
        .to_string();
    assert!(err.contains("preprocessor_config.json"), "{err}");
}

/// Found by the `image` fuzz target (`tests/fuzz_inputs/image`): a 427-byte JPEG declaring an
/// 8x65032 strip decoded in no time and then took 20 s to resize.  Resizing is now held to the
/// pixel limit too, so it is refused with the reason.
#[test]
fn an_extreme_strip_is_refused_instead_of_resized_for_seconds() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz_inputs/image/jpeg-8x65032-strip.jpg");
    let processor = processor("C").with_max_pixels(1 << 22);
    let err = expect_image_error(processor.load_file(&path), "too narrow or too wide");
    assert!(err.contains("8x65032"), "{err}");
}
