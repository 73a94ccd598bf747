"""Random-weight Gemma 3n checkpoints at the real E2B / E4B shapes, for speed and memory work.

Writes the Hugging Face hub layout of `google/gemma-3n-E2B-it` / `-E4B-it`:

    config.json                      hub (4.53-era) dialect: rope_theta / rope_local_base_freq
    generation_config.json
    model-0000N-of-0000M.safetensors bf16 shards of about 4 GB, tensor names as on the hub
    model.safetensors.index.json
    tokenizer.model                  synthetic SentencePiece model with 262,144 pieces
    tokenizer.json, tokenizer_config.json, chat_template.jinja
    preprocessor_config.json, processor_config.json

Every tensor of the real checkpoints is present at its real shape -- text decoder, the
`mobilenetv5_300m_enc` vision tower, the USM conformer audio tower, the embedders, and the k/v
weights of the KV-shared layers (transformers ignores them, llama.cpp's converter wants them).
Shapes come from transformers itself: the model is built on the meta device (no memory), then
each tensor is streamed to disk in chunks, so the whole model is never in RAM.

The values are random (a fixed pool of normal samples, reused at random offsets): speed does not
depend on them, and the outputs mean nothing.  Never commit the output; it is ~11 GB (E2B) or
~16 GB (E4B).

    /work/venv-ref/bin/python tests/reference/make_full_size.py --variant E2B --out /work/fullsize
"""

from __future__ import annotations

import argparse
import json
import math
import os
import struct
import sys
import time
from pathlib import Path

import numpy as np
import torch
from transformers import (
    Gemma3nAudioConfig,
    Gemma3nConfig,
    Gemma3nForConditionalGeneration,
    Gemma3nTextConfig,
    Gemma3nVisionConfig,
    GenerationConfig,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_reference import CHAT_TEMPLATE, build_processor  # noqa: E402

# The differences between the real checkpoints' text configs (transformers' defaults are E4B).
VARIANTS = {
    "E2B": dict(num_hidden_layers=30, intermediate_size=8192, num_kv_shared_layers=10),
    "E4B": dict(num_hidden_layers=35, intermediate_size=16384, num_kv_shared_layers=15),
}

TEXT_VOCAB = 262_144  # SentencePiece pieces, also the per-layer-embedding rows
VISION_VOCAB = 128
AUDIO_VOCAB = 128
SHARD_BYTES = 4_000_000_000
POOL = 1 << 24  # random values reused at random offsets


def build_config(variant: str) -> Gemma3nConfig:
    v = VARIANTS[variant]
    n = v["num_hidden_layers"]
    text = Gemma3nTextConfig(
        vocab_size=TEXT_VOCAB + VISION_VOCAB + AUDIO_VOCAB,
        vocab_size_per_layer_input=TEXT_VOCAB,
        num_hidden_layers=n,
        intermediate_size=[v["intermediate_size"]] * n,
        num_kv_shared_layers=v["num_kv_shared_layers"],
        activation_sparsity_pattern=[0.95] * 10 + [0.0] * (n - 10),
        layer_types=["full_attention" if (i + 1) % 5 == 0 else "sliding_attention" for i in range(n)],
    )
    vision = Gemma3nVisionConfig(vocab_size=VISION_VOCAB, vocab_offset=TEXT_VOCAB)
    audio = Gemma3nAudioConfig(vocab_size=AUDIO_VOCAB, vocab_offset=TEXT_VOCAB + VISION_VOCAB)
    return Gemma3nConfig(
        text_config=text,
        vision_config=vision,
        audio_config=audio,
        vision_soft_tokens_per_image=256,
        audio_soft_tokens_per_image=188,
        boi_token_id=255_999,
        eoi_token_id=TEXT_VOCAB,
        image_token_id=TEXT_VOCAB + 1,
        boa_token_id=256_000,
        eoa_token_id=TEXT_VOCAB + VISION_VOCAB,
        audio_token_id=TEXT_VOCAB + VISION_VOCAB + 1,
        eos_token_id=[1, 106],
        tie_word_embeddings=True,
    )


def hub_config(cfg: Gemma3nConfig) -> dict:
    """config.json as the hub checkpoints write it (rope_theta / rope_local_base_freq)."""
    d = cfg.to_dict()
    t = d["text_config"]
    rp = t.pop("rope_parameters")
    t["rope_theta"] = rp["full_attention"]["rope_theta"]
    t["rope_local_base_freq"] = rp["sliding_attention"]["rope_theta"]
    t["rope_scaling"] = None
    t["query_pre_attn_scalar"] = t["head_dim"]
    for section in (d, t, d["vision_config"], d["audio_config"]):
        section.pop("dtype", None)
        section["torch_dtype"] = "bfloat16"
    d["architectures"] = ["Gemma3nForConditionalGeneration"]
    return d


# --------------------------------------------------------------------------------------------------
# Tokenizer: the real id layout, synthetic pieces
# --------------------------------------------------------------------------------------------------
def pieces() -> list[tuple[str, int]]:
    """(piece, sentencepiece type) for ids 0..262143, with the special ids where the real model has them."""
    NORMAL, UNKNOWN, CONTROL, USER, BYTE = 1, 2, 3, 4, 6
    out = [("<pad>", CONTROL), ("<eos>", CONTROL), ("<bos>", CONTROL), ("<unk>", UNKNOWN), ("<mask>", USER)]
    out.append(("[multimodal]", USER))
    out += [(f"<unused{i}>", USER) for i in range(len(out), 105)]
    out += [("<start_of_turn>", USER), ("<end_of_turn>", USER)]
    out += [(f"<0x{b:02X}>", BYTE) for b in range(256)]
    out += [("▁", NORMAL), ("\n", NORMAL)] + [(chr(c), NORMAL) for c in range(33, 127)]
    fill = 0
    while len(out) < TEXT_VOCAB:
        i = len(out)
        if i == 255_999:
            out.append(("<start_of_image>", USER))
        elif i == 256_000:
            out.append(("<start_of_audio>", USER))
        else:
            out.append((f"▁w{fill}", NORMAL))
            fill += 1
    return out


def write_sentencepiece(path: Path, table: list[tuple[str, int]]) -> None:
    from sentencepiece import sentencepiece_model_pb2 as spm

    m = spm.ModelProto()
    m.trainer_spec.model_type = spm.TrainerSpec.BPE
    m.trainer_spec.vocab_size = len(table)
    m.trainer_spec.byte_fallback = True
    m.trainer_spec.unk_id, m.trainer_spec.bos_id, m.trainer_spec.eos_id, m.trainer_spec.pad_id = 3, 2, 1, 0
    m.normalizer_spec.name = "identity"
    m.normalizer_spec.add_dummy_prefix = False
    m.normalizer_spec.escape_whitespaces = True
    for i, (p, kind) in enumerate(table):
        sp = m.pieces.add()
        sp.piece, sp.type = p, kind
        sp.score = -float(i) if kind == 1 else 0.0
    path.write_bytes(m.SerializeToString())


def write_tokenizer(out: Path, cfg: Gemma3nConfig, table: list[tuple[str, int]]) -> None:
    from transformers import GemmaTokenizer

    vocab = {p: i for i, (p, _) in enumerate(table)}
    vocab["<end_of_image>"] = TEXT_VOCAB
    vocab["<image_soft_token>"] = TEXT_VOCAB + 1
    for i in range(2, VISION_VOCAB):
        vocab[f"<unused_vision_{i}>"] = TEXT_VOCAB + i
    vocab["<end_of_audio>"] = TEXT_VOCAB + VISION_VOCAB
    vocab["<audio_soft_token>"] = TEXT_VOCAB + VISION_VOCAB + 1
    for i in range(2, AUDIO_VOCAB):
        vocab[f"<unused_audio_{i}>"] = TEXT_VOCAB + VISION_VOCAB + i
    tok = GemmaTokenizer(
        vocab=vocab,
        merges=[],
        add_bos_token=True,
        add_eos_token=False,
        extra_special_tokens={
            "image_token": "<image_soft_token>",
            "boi_token": "<start_of_image>",
            "eoi_token": "<end_of_image>",
            "audio_token": "<audio_soft_token>",
            "boa_token": "<start_of_audio>",
            "eoa_token": "<end_of_audio>",
        },
    )
    spec = {"vision": {"image_size": 768}, "audio": {"input_feat_size": cfg.audio_config.input_feat_size}}
    processor = build_processor(spec, tok, cfg)
    processor.save_pretrained(out)
    pc = json.loads((out / "processor_config.json").read_text())
    pre = {**pc["feature_extractor"], **pc["image_processor"], "processor_class": "Gemma3nProcessor"}
    (out / "preprocessor_config.json").write_text(json.dumps(pre, indent=2, sort_keys=True) + "\n")
    if not (out / "chat_template.jinja").exists():
        (out / "chat_template.jinja").write_text(CHAT_TEMPLATE)


# --------------------------------------------------------------------------------------------------
# Weights, streamed
# --------------------------------------------------------------------------------------------------
def tensor_specs(cfg: Gemma3nConfig) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    with torch.device("meta"):
        model = Gemma3nForConditionalGeneration(cfg)
    specs = {k: (tuple(t.shape), t.dtype) for k, t in model.state_dict().items() if k != "lm_head.weight"}
    # The KV-shared layers' k/v weights: present in the real files, ignored by transformers.
    t = cfg.text_config
    kv = t.num_key_value_heads * t.head_dim
    for i in range(t.num_hidden_layers - t.num_kv_shared_layers, t.num_hidden_layers):
        p = f"model.language_model.layers.{i}.self_attn."
        specs.setdefault(p + "k_proj.weight", ((kv, t.hidden_size), torch.bfloat16))
        specs.setdefault(p + "v_proj.weight", ((kv, t.hidden_size), torch.bfloat16))
        specs.setdefault(p + "k_norm.weight", ((t.head_dim,), torch.bfloat16))
    return dict(sorted(specs.items()))


def st_dtype(dtype: torch.dtype) -> tuple[str, int]:
    if dtype.is_floating_point:
        return "BF16", 2
    return {torch.int64: ("I64", 8), torch.int32: ("I32", 4)}[dtype]


def write_chunks(f, name: str, shape: tuple[int, ...], dtype: torch.dtype, pool: torch.Tensor, rng,
                 hole: bool = False) -> None:
    numel = math.prod(shape)
    if hole:
        # Left as a hole in a sparse file: reads as zeros, takes no disk.
        f.seek(numel * st_dtype(dtype)[1], os.SEEK_CUR)
        return
    if not dtype.is_floating_point:
        f.write(np.zeros(numel, dtype=np.int64 if dtype == torch.int64 else np.int32).tobytes())
        return
    if len(shape) <= 1:
        # Norm scales and the like: 1 (biases and running means: 0) keeps activations sane.
        value = 0.0 if ("bias" in name or "running_mean" in name) else 1.0
        f.write(torch.full((numel,), value, dtype=torch.bfloat16).view(torch.int16).numpy().tobytes())
        return
    done = 0
    while done < numel:
        n = min(POOL, numel - done)
        start = int(rng.integers(0, POOL))
        f.write(pool[start : start + n].view(torch.int16).numpy().tobytes())
        done += n


def write_weights(out: Path, specs: dict, seed: int, holes: set[str] = frozenset()) -> int:
    # Group the tensors into shards of about SHARD_BYTES, in name order.
    shards: list[list[str]] = [[]]
    size = 0
    for name, (shape, dtype) in specs.items():
        nbytes = math.prod(shape) * st_dtype(dtype)[1]
        if shards[-1] and size + nbytes > SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    gen = torch.Generator().manual_seed(seed)
    pool = (torch.randn(2 * POOL, generator=gen) * 0.02).to(torch.bfloat16)
    rng = np.random.default_rng(seed)
    weight_map, total = {}, 0
    for k, names in enumerate(shards):
        fname = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        header, offset = {"__metadata__": {"format": "pt"}}, 0
        for name in names:
            shape, dtype = specs[name]
            code, width = st_dtype(dtype)
            nbytes = math.prod(shape) * width
            header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
            offset += nbytes
            weight_map[name] = fname
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        with open(out / fname, "wb") as f:
            f.write(struct.pack("<Q", len(raw)) + raw)
            for name in names:
                write_chunks(f, name, *specs[name], pool, rng, hole=name in holes)
            f.truncate()  # a trailing hole still counts towards the file's length
        total += offset
        print(f"  {fname}: {len(names)} tensors, {offset / 1e9:.2f} GB", flush=True)
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variant", choices=sorted(VARIANTS), action="append", required=True)
    ap.add_argument("--out", type=Path, required=True, help="parent folder; each variant goes to OUT/NAME")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-weights", action="store_true", help="write configs and tokenizer only")
    ap.add_argument("--sparse-per-layer-table", action="store_true",
                    help="leave the per-layer-embedding table (E2B 4 GB, E4B 4.7 GB) as a hole of zeros "
                         "in a sparse file: it is only gathered, so speed and memory do not change, "
                         "and the checkpoint takes that much less disk")
    args = ap.parse_args()
    for variant in args.variant:
        t0 = time.perf_counter()
        out = args.out / variant
        out.mkdir(parents=True, exist_ok=True)
        cfg = build_config(variant)
        (out / "config.json").write_text(json.dumps(hub_config(cfg), indent=2, sort_keys=True) + "\n")
        GenerationConfig(
            bos_token_id=2,
            eos_token_id=[1, 106],
            pad_token_id=0,
            cache_implementation="hybrid",
            do_sample=True,
            top_k=64,
            top_p=0.95,
        ).save_pretrained(out)
        table = pieces()
        write_sentencepiece(out / "tokenizer.model", table)
        write_tokenizer(out, cfg, table)
        if not args.skip_weights:
            specs = tensor_specs(cfg)
            params = sum(math.prod(s) for s, _ in specs.values())
            print(f"{variant}: {len(specs)} tensors, {params / 1e9:.2f} B parameters", flush=True)
            holes = {n for n in specs if n.endswith("embed_tokens_per_layer.weight")}
            total = write_weights(out, specs, args.seed, holes if args.sparse_per_layer_table else set())
            print(f"{variant}: {total / 1e9:.2f} GB in {time.perf_counter() - t0:.0f} s -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
