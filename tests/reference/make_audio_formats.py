"""Small audio files in every compressed format the engine decodes, all made from one WAV original,
for the decoding tests in `crates/engine/tests/audio_formats.rs`.

    PYTHONPATH=<dir with PyAV> python make_audio_formats.py [--out ../fixtures/audio]

Needs numpy and soundfile (libsndfile bundles the FLAC, MP3/LAME and Ogg/Vorbis encoders; both are
in requirements.txt) and PyAV (`pip install av`, tested with 18.1.0: its wheel bundles ffmpeg's
AAC encoder).  The original is 2 s, 22.05 kHz, mono, 16-bit: a 440 Hz tone and a 1 kHz tone
that fade in and out in turn, so that both timing and content can be checked after a lossy codec.

Writes `original.wav`, `tone.flac` (lossless), `tone.mp3`, `tone.ogg` (Vorbis), `tone.m4a` (AAC),
and two damaged files: `truncated.mp3` (the MP3 cut off after 40 % of its bytes) and
`corrupt_box.m4a` (the M4A with the sample-size box `stsz` declaring an absurd sample count).
"""

import argparse
import pathlib
import struct

import av
import numpy as np
import soundfile as sf

RATE = 22050
SECONDS = 2.0


def signal() -> np.ndarray:
    t = np.arange(int(RATE * SECONDS)) / RATE
    # The 440 Hz tone dominates the first half, the 1 kHz tone the second.
    fade = np.clip((t - 0.5) / 1.0, 0.0, 1.0)
    x = 0.5 * (1 - fade) * np.sin(2 * np.pi * 440 * t) + 0.5 * fade * np.sin(2 * np.pi * 1000 * t)
    return np.round(x * 32767).astype(np.int16)


def write_m4a(path: pathlib.Path, pcm: np.ndarray) -> None:
    with av.open(str(path), "w", format="ipod") as out:
        stream = out.add_stream("aac", rate=RATE, layout="mono")
        stream.bit_rate = 48_000
        for start in range(0, len(pcm), 1024):
            frame = av.AudioFrame.from_ndarray(pcm[None, start : start + 1024], format="s16", layout="mono")
            frame.sample_rate = RATE
            frame.pts = start
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


def corrupt_stsz(data: bytes) -> bytes:
    """Set the `stsz` box's sample count to 0x7fffffff while the box keeps its real size."""
    at = data.index(b"stsz")
    # Box body: version/flags (4), default sample size (4), sample count (4).
    count = at + 4 + 4 + 4
    return data[:count] + struct.pack(">I", 0x7FFFFFFF) + data[count + 4 :]


def main() -> None:
    ap = argparse.ArgumentParser()
    here = pathlib.Path(__file__).resolve().parent
    ap.add_argument("--out", type=pathlib.Path, default=here.parent / "fixtures" / "audio")
    args = ap.parse_args()
    out: pathlib.Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    pcm = signal()
    sf.write(out / "original.wav", pcm, RATE, subtype="PCM_16")
    sf.write(out / "tone.flac", pcm, RATE, format="FLAC", subtype="PCM_16")
    sf.write(out / "tone.mp3", pcm, RATE, format="MP3", subtype="MPEG_LAYER_III")
    sf.write(out / "tone.ogg", pcm, RATE, format="OGG", subtype="VORBIS")
    write_m4a(out / "tone.m4a", pcm)
    mp3 = (out / "tone.mp3").read_bytes()
    (out / "truncated.mp3").write_bytes(mp3[: len(mp3) * 2 // 5])
    (out / "corrupt_box.m4a").write_bytes(corrupt_stsz((out / "tone.m4a").read_bytes()))
    for f in sorted(out.iterdir()):
        print(f"{f.name}: {f.stat().st_size} bytes")


if __name__ == "__main__":
    main()
