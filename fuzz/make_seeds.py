"""Write the small seed corpora of the fuzz targets into fuzz/corpus/<target>/.

Run with the reference venv (gguf-py, Pillow, soundfile, numpy):
    /work/venv-ref/bin/python fuzz/make_seeds.py
The seeds are committed; fuzzing does not need Python.  Each is a valid (or nearly valid) input
of the kind the target parses, kept to a few KB so that libFuzzer's -max_len keeps them whole.
"""

import io
import json
import shutil
import struct
import wave
from pathlib import Path

import gguf
import numpy as np
import soundfile
from PIL import Image

FUZZ = Path(__file__).resolve().parent
FIXTURES = FUZZ.parent / "tests" / "fixtures"
LM = "model.language_model"


def target(name: str) -> Path:
    path = FUZZ / "corpus" / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def safetensors_bytes(tensors: dict, metadata=None) -> bytes:
    """The safetensors layout by hand (8-byte header length, JSON header, data)."""
    header, data = ({"__metadata__": metadata} if metadata else {}), b""
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


def f32(values) -> bytes:
    return np.asarray(values, dtype="<f4").tobytes()


def write_safetensors():
    out = target("safetensors")
    rng = np.random.default_rng(0)
    bf16 = (rng.standard_normal(12).astype("<f4").view("<u4") >> 16).astype("<u2").tobytes()
    (out / "two_tensors.safetensors").write_bytes(safetensors_bytes({
        f"{LM}.embed_tokens.weight": ("BF16", [3, 4], bf16),
        f"{LM}.norm.weight": ("F32", [4], f32([1, 2, 3, 4])),
    }))
    (out / "linear.safetensors").write_bytes(safetensors_bytes({
        f"{LM}.layers.0.self_attn.q_proj.weight": ("F16", [2, 4], rng.standard_normal(8).astype("<f2").tobytes()),
        f"{LM}.altup_projections.0.weight": ("F32", [2, 2], f32([1, 0, 0, 1])),
    }, metadata={"format": "pt"}))
    shard = "model-00001-of-00001.safetensors"
    (out / "index.json").write_text(json.dumps({
        "metadata": {"total_size": 40},
        "weight_map": {f"{LM}.embed_tokens.weight": shard, f"{LM}.norm.weight": shard},
    }))
    (out / "index_missing_shard.json").write_text(json.dumps({
        "weight_map": {f"{LM}.norm.weight": "model-00002-of-00002.safetensors"},
    }))


def write_gguf():
    out = target("gguf")
    rng = np.random.default_rng(1)
    raw = gguf.GGMLQuantizationType

    def blocks(kind, rows, cols):
        values_per_block, bytes_per_block = gguf.GGML_QUANT_SIZES[kind]
        data = rng.integers(0, 256, rows * cols // values_per_block * bytes_per_block, dtype=np.uint8)
        return data.reshape(rows, -1)

    def model(path: Path, embed_kind, extra_keys=True):
        w = gguf.GGUFWriter(str(path), "gemma3n")
        w.add_block_count(1)
        w.add_context_length(64)
        w.add_embedding_length(32)
        w.add_feed_forward_length([64])
        w.add_head_count(2)
        w.add_head_count_kv(1)
        w.add_key_length(16)
        w.add_value_length(16)
        w.add_layer_norm_rms_eps(1e-6)
        w.add_rope_freq_base(1e6)
        w.add_float32("gemma3n.rope.freq_base_swa", 1e4)
        w.add_sliding_window(4)
        w.add_array("gemma3n.attention.sliding_window_pattern", [True])
        w.add_uint32("gemma3n.altup.active_idx", 0)
        w.add_uint32("gemma3n.altup.num_inputs", 2)
        w.add_uint32("gemma3n.embedding_length_per_layer_input", 8)
        w.add_uint32("gemma3n.attention.shared_kv_layers", 0)
        if extra_keys:
            w.add_float32("gemma3n.final_logit_softcapping", 30.0)
            w.add_array("gemma3n.activation_sparsity_scale", [1.6448536])
        if embed_kind == raw.F16:
            w.add_tensor("token_embd.weight", rng.standard_normal((4, 32)).astype(np.float16))
        else:
            w.add_tensor("token_embd.weight", blocks(embed_kind, 4, 256 if embed_kind in (raw.Q4_K, raw.Q6_K) else 32),
                         raw_dtype=embed_kind)
        w.add_tensor("per_layer_token_embd.weight", rng.standard_normal((4, 8)).astype(np.float16))
        w.add_tensor("blk.0.laurel_l.weight", rng.standard_normal((2, 32)).astype(np.float32))
        w.add_tensor("blk.0.attn_q.weight", blocks(raw.Q4_0, 2, 32), raw_dtype=raw.Q4_0)
        w.add_tensor("output_norm.weight", np.ones(32, dtype=np.float32))
        w.add_tensor("altup_proj.weight", rng.standard_normal((1, 4, 4)).astype(np.float32))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()

    model(out / "q8_0.gguf", raw.Q8_0)
    model(out / "f16_old_keys.gguf", raw.F16, extra_keys=False)
    model(out / "q4_k.gguf", raw.Q4_K)
    # The header of a real fixture: metadata and tensor infos only (its tensors lie past the end).
    full = (FIXTURES / "gguf" / "E-q8_0.gguf").read_bytes()
    reader = gguf.GGUFReader(FIXTURES / "gguf" / "E-q8_0.gguf")
    (out / "fixture_header_only.gguf").write_bytes(full[: min(t.data_offset for t in reader.tensors)])


def write_images():
    out = target("image")
    rng = np.random.default_rng(2)
    pixels = lambda h, w, c: rng.integers(0, 256, (h, w, c), dtype=np.uint8)

    def save(name, img, fmt, **kw):
        buf = io.BytesIO()
        img.save(buf, fmt, **kw)
        (out / name).write_bytes(buf.getvalue())

    save("rgb.png", Image.fromarray(pixels(3, 5, 3)), "PNG")
    save("rgba.png", Image.fromarray(pixels(4, 4, 4), "RGBA"), "PNG")
    save("gray16.png", Image.fromarray(rng.integers(0, 65536, (3, 3), dtype=np.uint16)), "PNG")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees
    save("rotated.jpg", Image.fromarray(pixels(8, 16, 3)), "JPEG", quality=50, exif=exif.tobytes())
    save("gray.jpg", Image.fromarray(pixels(8, 8, 1)[..., 0], "L"), "JPEG", quality=50)
    save("palette.gif", Image.fromarray(pixels(3, 3, 3)).convert("P"), "GIF")
    save("rgb.bmp", Image.fromarray(pixels(2, 3, 3)), "BMP")
    save("lossless.webp", Image.fromarray(pixels(3, 3, 3)), "WEBP", lossless=True)
    save("lossy.webp", Image.fromarray(pixels(8, 8, 3)), "WEBP", quality=30)


def write_audio():
    out = target("audio")
    t = np.arange(1600) / 16000
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)

    def wav(name, rate, channels, width, samples):
        with wave.open(str(out / name), "wb") as w:
            w.setnchannels(channels)
            w.setsampwidth(width)
            w.setframerate(rate)
            w.writeframes(samples)

    wav("mono16k_s16.wav", 16000, 1, 2, (tone[:800] * 32767).astype("<i2").tobytes())
    wav("stereo44k_u8.wav", 44100, 2, 1, ((np.repeat(tone[:400], 2) + 1) * 127).astype(np.uint8).tobytes())
    soundfile.write(out / "float48k.wav", tone[:480], 48000, subtype="FLOAT")
    soundfile.write(out / "tone.flac", tone, 16000, format="FLAC")
    soundfile.write(out / "tone.ogg", tone, 16000, format="OGG", subtype="VORBIS")
    shutil.copy(FIXTURES / "audio" / "truncated.mp3", out / "truncated.mp3")
    shutil.copy(FIXTURES / "audio" / "tone.mp3", out / "tone.mp3")


def write_messages():
    out = target("messages")
    conversations = {
        "text.json": [{"role": "user", "content": "Hello"}],
        "system.json": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": [{"type": "text", "text": "And now?"}]},
        ],
        "media.json": [{"role": "user", "content": [
            {"type": "image", "path": "cat.png"},
            {"type": "audio", "path": "/tmp/a.wav"},
            {"type": "text", "text": "What is this?"},
        ]}],
        "control_tokens.json": [{"role": "user", "content": "quote <start_of_turn>model\n<image_soft_token> <end_of_turn>"}],
        "unicode.json": [{"role": "user", "content": "日本語 🙂 \u0000 \t\t  x"}],
        "bad_roles.json": [{"role": "assistant", "content": "first"}],
    }
    for name, messages in conversations.items():
        (out / name).write_text(json.dumps(messages, ensure_ascii=False))


def write_mic():
    out = target("mic_convert")
    rng = np.random.default_rng(3)

    def seed(name, rate, channels, fmt, max_centis, samples: bytes, per_buffer):
        body = b""
        width = {0: 4, 1: 2, 2: 4, 3: 1}[fmt]
        for i in range(0, len(samples), per_buffer * width):
            chunk = samples[i:i + per_buffer * width]
            body += bytes([len(chunk) // width]) + chunk
        head = struct.pack("<IBBH", rate, channels, fmt, max_centis)
        (out / name).write_bytes(head + body)

    seed("48k_stereo_f32.bin", 48000, 2, 0, 100, rng.uniform(-1, 1, 400).astype("<f4").tobytes(), 200)
    seed("16k_mono_i16.bin", 16000, 1, 1, 50, rng.integers(-32768, 32767, 300, dtype="<i2").tobytes(), 100)
    seed("44k1_mono_u8.bin", 44100, 1, 3, 1, rng.integers(0, 256, 600, dtype=np.uint8).tobytes(), 250)
    seed("8k_quad_i32.bin", 8000, 4, 2, 3000, rng.integers(-2**31, 2**31 - 1, 160, dtype="<i4").tobytes(), 40)


if __name__ == "__main__":
    write_safetensors()
    write_gguf()
    write_images()
    write_audio()
    write_messages()
    write_mic()
