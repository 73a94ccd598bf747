"""A GGUF that needs no file beside it, made by llama.cpp's own converter.

Builds checkpoint `G` (Gemma 3n's real text layout scaled down: four AltUp streams, four
sliding layers then one full, a local RoPE base of 10000, soft-cap 30) with a SentencePiece
`tokenizer.model` trained here (BPE, byte fallback, Gemma's special pieces), its `tokenizer.json`
as transformers derives it from that model, then runs `convert_hf_to_gguf.py` from the
llama-cpp-python 0.3.36 sdist offline on it:

    pip download --no-deps --no-binary llama-cpp-python llama-cpp-python==0.3.36 -d /work/llama-sdist
    tar xzf /work/llama-sdist/llama_cpp_python-0.3.36.tar.gz -C /work/llama-sdist
    /work/venv-ref/bin/python tests/reference/make_gguf_lone.py \\
        --converter /work/llama-sdist/llama_cpp_python-0.3.36/vendor/llama.cpp/convert_hf_to_gguf.py

Writes tests/fixtures/gguf/G (the checkpoint, for the safetensors path and the tokenizer.json the
GGUF's tokenizer must match) and tests/fixtures/gguf/lone/G-f32.gguf (alone in its folder).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import sentencepiece as spm
from tokenizers import AddedToken
from transformers import GemmaTokenizer

sys.path.insert(0, str(Path(__file__).parent))
import make_reference as ref  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
S, F = "sliding_attention", "full_attention"
CORPUS = """The quick brown fox jumps over the lazy dog. Hello, world! How are you today?
def main():
    print("hello")
    return 0
Bonjour le monde, ça va ? Déjà vu. Grüße aus München. ¿Qué tal? Ñandú.
Привет, мир! Как дела? Здравствуйте.
こんにちは世界。今日はいい天気ですね。
你好，世界。我们今天去公园。
안녕하세요 세계
مرحبا بالعالم
नमस्ते दुनिया
🙂 🎉 👍 ❤️
for (int i = 0; i < 10; i++) { x += i * 2; }
\ttabs\tand    spaces   here
12345 67890 3.14159
"""
TURN = ["<start_of_turn>", "<end_of_turn>"]
MEDIA_IN_SPM = ["<start_of_image>", "<start_of_audio>"]
MEDIA_ADDED = ["<end_of_image>", "<image_soft_token>", "<end_of_audio>", "<audio_soft_token>"]

G = dict(
    seed=5,
    text=dict(
        hidden_size=32,
        hidden_size_per_layer_input=8,
        intermediate_size=[64] * 10,
        num_hidden_layers=10,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        layer_types=[S, S, S, S, F] * 2,
        sliding_window=4,
        num_kv_shared_layers=2,
        activation_sparsity_pattern=[0.95] * 5 + [0.0] * 5,
        laurel_rank=4,
        altup_num_inputs=4,
        final_logit_softcapping=30.0,
        rope_theta_full=1_000_000.0,
        rope_theta_sliding=10_000.0,
        audio_soft_tokens=7,
    ),
    vision=copy.deepcopy(ref.VARIANTS["D"]["vision"]),
    audio=copy.deepcopy(ref.VARIANTS["D"]["audio"]),
)


def build_tokenizer(work: Path, ckpt: Path) -> dict:
    (work / "corpus.txt").write_text(CORPUS * 3)
    spm.SentencePieceTrainer.train(
        input=str(work / "corpus.txt"), model_prefix=str(work / "tokenizer"), model_type="bpe",
        vocab_size=600, byte_fallback=True, character_coverage=1.0, split_digits=True,
        add_dummy_prefix=False, remove_extra_whitespaces=False, normalization_rule_name="identity",
        allow_whitespace_only_pieces=True, pad_id=0, eos_id=1, bos_id=2, unk_id=3,
        pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>", unk_piece="<unk>",
        control_symbols=["<mask>", "[multimodal]"],
        user_defined_symbols=TURN + MEDIA_IN_SPM + ["▁▁▁▁"],
        hard_vocab_limit=False, minloglevel=2, num_threads=1)
    spm_dir = work / "spm"
    spm_dir.mkdir()
    shutil.copy(work / "tokenizer.model", spm_dir / "tokenizer.model")
    tok = GemmaTokenizer.from_pretrained(str(spm_dir))
    T = len(tok)
    # Turn and media markers are special in the real vocabulary; the last media tokens come after
    # the SentencePiece pieces (262144.. there).
    tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in TURN + MEDIA_IN_SPM + MEDIA_ADDED],
                   special_tokens=True)
    tok.chat_template = (ROOT / "tests/fixtures/E/model/chat_template.jinja").read_text()
    tok.save_pretrained(str(ckpt))
    shutil.copy(work / "tokenizer.model", ckpt / "tokenizer.model")
    # What transformers 4 wrote and the converter reads for the added tokens' types.
    tj = json.loads((ckpt / "tokenizer.json").read_text())
    tc = json.loads((ckpt / "tokenizer_config.json").read_text())
    tc["added_tokens_decoder"] = {str(a["id"]): {k: a[k] for k in ("content", "lstrip", "normalized", "rstrip", "single_word", "special")}
                                  for a in tj["added_tokens"]}
    tc["add_bos_token"] = True
    (ckpt / "tokenizer_config.json").write_text(json.dumps(tc, indent=2, ensure_ascii=False))
    vocab = tok.get_vocab()
    ids = dict(text_vocab_size=T, vision_vocab_offset=T, vision_vocab_size=2, audio_vocab_offset=T + 2,
               audio_vocab_size=2, vocab_size=T + 4, pad=0, eos=1, bos=2, unk=3,
               start_of_turn=vocab["<start_of_turn>"], end_of_turn=vocab["<end_of_turn>"],
               boi=vocab["<start_of_image>"], boa=vocab["<start_of_audio>"], eoi=vocab["<end_of_image>"],
               image=vocab["<image_soft_token>"], eoa=vocab["<end_of_audio>"], audio=vocab["<audio_soft_token>"])
    assert (ids["eoi"], ids["image"], ids["eoa"], ids["audio"]) == (T, T + 1, T + 2, T + 3), ids
    return ids


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--converter", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=ROOT / "tests/fixtures/gguf")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ckpt = work / "G"
        ids = build_tokenizer(work, ckpt)
        cfg = ref.build_config(G, ids)
        import torch
        from safetensors.torch import save_file
        from transformers import Gemma3nForConditionalGeneration
        pristine = copy.deepcopy(cfg.to_dict())
        torch.manual_seed(G["seed"])
        model = Gemma3nForConditionalGeneration(copy.deepcopy(cfg)).eval()
        model.config.vision_config.model_args = pristine["vision_config"]["model_args"]  # timm mutates it
        ref.randomize_(model, G["seed"])
        model.config.architectures = ["Gemma3nForConditionalGeneration"]
        model.config.save_pretrained(str(ckpt))
        weights = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
        weights.update(ref.shared_kv_dummy_weights(cfg, G["seed"]))
        save_file(weights, str(ckpt / "model.safetensors"), metadata={"format": "pt"})
        gen = json.loads((ROOT / "tests/fixtures/E/model/generation_config.json").read_text())
        gen["eos_token_id"] = [ids["eos"], ids["end_of_turn"]]
        (ckpt / "generation_config.json").write_text(json.dumps(gen, indent=2))
        lone = args.out / "lone"
        lone.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        subprocess.run([sys.executable, str(args.converter), str(ckpt), "--outtype", "f32",
                        "--outfile", str(lone / "G-f32.gguf")], check=True, env=env)
        dst = args.out / "G"
        shutil.rmtree(dst, ignore_errors=True)
        dst.mkdir()
        for name in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                     "chat_template.jinja", "generation_config.json"]:
            shutil.copy(ckpt / name, dst / name)
        # The towers are variant E's (D's), and so are their processors.
        for name in ["preprocessor_config.json", "processor_config.json"]:
            shutil.copy(ROOT / "tests/fixtures/E/model" / name, dst / name)
    for p in sorted(args.out.glob("G/*")) + [lone / "G-f32.gguf"]:
        print(p, p.stat().st_size, "bytes")


if __name__ == "__main__":
    main()
