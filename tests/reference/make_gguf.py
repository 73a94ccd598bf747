"""Tiny llama.cpp-format GGUF files of a reference checkpoint's text decoder, for the GGUF loader.

llama.cpp's `convert_hf_to_gguf.py` cannot take the tiny fixtures (it wants a SentencePiece
`tokenizer.model` and exactly 4 AltUp inputs), so this writes what its `Gemma3NModel` writes,
with the `gguf` package it uses:

- tensor names from `gguf.get_tensor_name_map(GEMMA3N)` (`blk.N.attn_q`, `per_layer_token_embd`, ...),
  the AltUp projections stacked into `altup_proj` / `altup_unembd_proj`, names ending in `_scale`
  given a `.weight` suffix, the token and per-layer embedding tables zero-padded to `vocab_size`;
- its `gemma3n.*` metadata, the sparsity stored as standard deviations (`activation_sparsity_scale`)
  and the layer types as `sliding_window_pattern`;
- 1-D tensors and the AltUp coefficient matrices in F32; at `q8_0` every other matrix in Q8_0 where
  its rows split into 32-value blocks, F16 otherwise (the converter's fallback).

The GGUF holds no tokenizer: the folder gets the fixture's tokenizer.json, tokenizer_config.json,
chat template and generation config beside it, and its config.json, whose multimodal token ids
(the GGUF has none) the tiny tokenizer needs; the text config still comes from the GGUF.  Run after `make_reference.py` (which replaces
the fixture folders):

    /work/venv-ref/bin/python tests/reference/make_gguf.py --variant E --out tests/fixtures/gguf
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import gguf
import numpy as np
from safetensors.numpy import load_file
import torch

ROOT = Path(__file__).resolve().parents[2]
PREFIX = "model.language_model."
COMPANIONS = ["config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
              "generation_config.json"]


def gguf_tensors(weights: dict[str, np.ndarray], cfg: dict) -> dict[str, np.ndarray]:
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GEMMA3N, cfg["num_hidden_layers"])
    out: dict[str, np.ndarray] = {}
    stacks: dict[str, list[np.ndarray]] = {"altup_proj.weight": [], "altup_unembd_proj.weight": []}
    for name, value in sorted(weights.items()):
        if not name.startswith(PREFIX):
            continue
        hf = "model." + name[len(PREFIX):]
        if hf.endswith("_scale"):
            hf += ".weight"
        value = value.astype(np.float32)
        if "altup_unembed_projections" in hf:
            stacks["altup_unembd_proj.weight"].append(value)
            continue
        if "altup_projections" in hf:
            stacks["altup_proj.weight"].append(value)
            continue
        if "embed_tokens" in hf and value.shape[0] < cfg["vocab_size"]:
            pad = np.zeros((cfg["vocab_size"] - value.shape[0], value.shape[1]), np.float32)
            value = np.concatenate([value, pad])
        target = names.get_name(hf, try_suffixes=(".weight",))
        if target is None:
            raise SystemExit(f"no llama.cpp name for {name}")
        out[target] = value
    for target, parts in stacks.items():
        out[target] = np.stack(parts)  # sorted names: projections 0, 1, 2, ... in order
    return out


def write(path: Path, tensors: dict[str, np.ndarray], cfg: dict, qtype: str, legacy: bool = False) -> None:
    """`legacy`: the mid-2025 converter's dialect (no `rope.freq_base_swa`, no
    `final_logit_softcapping`, `shared_kv_layers` as a float, `token_embd` cut to the per-layer
    vocabulary as 262,144 rows were cut from 262,400)."""
    w = gguf.GGUFWriter(str(path), "gemma3n")
    arch = "gemma3n"
    n = cfg["num_hidden_layers"]
    ffn = cfg["intermediate_size"]
    w.add_uint32(f"{arch}.block_count", n)
    w.add_uint32(f"{arch}.context_length", cfg["max_position_embeddings"])
    w.add_uint32(f"{arch}.embedding_length", cfg["hidden_size"])
    w.add_array(f"{arch}.feed_forward_length", ffn if isinstance(ffn, list) else [ffn] * n)
    w.add_uint32(f"{arch}.attention.head_count", cfg["num_attention_heads"])
    w.add_uint32(f"{arch}.attention.head_count_kv", cfg["num_key_value_heads"])
    rope = cfg["rope_parameters"]
    w.add_float32(f"{arch}.rope.freq_base", rope["full_attention"]["rope_theta"])
    if not legacy:
        w.add_float32(f"{arch}.rope.freq_base_swa", rope["sliding_attention"]["rope_theta"])
    w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", cfg["rms_norm_eps"])
    w.add_uint32(f"{arch}.attention.key_length", cfg["head_dim"])
    w.add_uint32(f"{arch}.attention.value_length", cfg["head_dim"])
    if not legacy:
        w.add_float32(f"{arch}.final_logit_softcapping", cfg["final_logit_softcapping"])
    w.add_uint32(f"{arch}.attention.sliding_window", cfg["sliding_window"])
    w.add_uint32(f"{arch}.altup.active_idx", cfg["altup_active_idx"])
    w.add_uint32(f"{arch}.altup.num_inputs", cfg["altup_num_inputs"])
    w.add_uint32(f"{arch}.embedding_length_per_layer_input", cfg["hidden_size_per_layer_input"])
    if legacy:
        w.add_float32(f"{arch}.attention.shared_kv_layers", float(cfg["num_kv_shared_layers"]))
    else:
        w.add_uint32(f"{arch}.attention.shared_kv_layers", cfg["num_kv_shared_layers"])
    # the converter's arithmetic: a float32 icdf (-inf for dense layers)
    normal = torch.distributions.normal.Normal(0, 1)
    scale = [normal.icdf(torch.tensor(s, dtype=torch.float32)).item()
             for s in cfg["activation_sparsity_pattern"]]
    w.add_array(f"{arch}.activation_sparsity_scale", scale)
    w.add_array(f"{arch}.attention.sliding_window_pattern",
                [t == "sliding_attention" for t in cfg["layer_types"]])
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0 if qtype == "q8_0" else gguf.LlamaFileType.ALL_F32)
    for name, value in tensors.items():
        if legacy and name in ("token_embd.weight", "per_layer_token_embd.weight"):
            value = value[:cfg["vocab_size_per_layer_input"]]
        keep_f32 = value.ndim == 1 or "altup_correct_coef" in name or "altup_predict_coef" in name
        if qtype == "f32" or keep_f32:
            w.add_tensor(name, value)
        elif value.shape[-1] % 32 == 0:
            w.add_tensor(name, gguf.quants.quantize(value, gguf.GGMLQuantizationType.Q8_0),
                         raw_dtype=gguf.GGMLQuantizationType.Q8_0)
        else:
            w.add_tensor(name, value.astype(np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


# Every block type candle reads, as llama.cpp's quantisation presets write them for Gemma 3n.
QUANT_TYPES = ["F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0",
               "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]


def make_quant_types(path: Path, golden: Path) -> None:
    """One [2, 512] tensor per block type, of random block bytes (blocks whose decoded values are
    not finite or exceed 1e4 are redrawn), and gguf-py's dequantisation of each as the golden."""
    from safetensors.numpy import save_file
    rng = np.random.default_rng(7)
    w = gguf.GGUFWriter(str(path), "quant_types")
    expected = {}
    for name in QUANT_TYPES:
        qtype = gguf.GGMLQuantizationType[name]
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        blocks = []
        while len(blocks) < 2 * 512 // block:
            raw = rng.integers(0, 256, size, dtype=np.uint8)
            with np.errstate(all="ignore"):  # rejected draws may overflow
                values = gguf.quants.dequantize(raw, qtype)
            if np.all(np.isfinite(values)) and np.abs(values).max() < 1e4:
                blocks.append(raw)
        raw = np.concatenate(blocks).reshape(2, -1)
        w.add_tensor(name, raw, raw_dtype=qtype)
        expected[name] = gguf.quants.dequantize(raw, qtype).astype(np.float32).reshape(2, 512)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    save_file(expected, str(golden))
    print(path, path.stat().st_size, "bytes")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", default="E")
    ap.add_argument("--out", type=Path, default=ROOT / "tests/fixtures/gguf")
    args = ap.parse_args()
    src = ROOT / "tests/fixtures" / args.variant / "model"
    cfg = json.loads((src / "config.json").read_text())["text_config"]
    tensors = gguf_tensors(load_file(src / "model.safetensors"), cfg)
    args.out.mkdir(parents=True, exist_ok=True)
    for qtype in ["f32", "q8_0"]:
        path = args.out / f"{args.variant}-{qtype}.gguf"
        write(path, tensors, cfg, qtype)
        print(path, path.stat().st_size, "bytes")
    legacy = args.out / f"{args.variant}-legacy.gguf"
    write(legacy, tensors, cfg, "f32", legacy=True)
    print(legacy, legacy.stat().st_size, "bytes")
    # An i-quant file (as the IQ presets write): refused, naming the tensor and its type.
    w = gguf.GGUFWriter(str(args.out / "iq4_xs.gguf"), "gemma3n")
    w.add_tensor("blk.0.ffn_down.weight", np.zeros((1, 136), np.uint8),
                 raw_dtype=gguf.GGMLQuantizationType.IQ4_XS)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    make_quant_types(args.out / "quant_types.gguf", args.out / "quant_types.safetensors")
    for name in COMPANIONS:
        shutil.copy(src / name, args.out / name)


if __name__ == "__main__":
    main()
