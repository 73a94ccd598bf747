#!/usr/bin/env python3
"""MatFormer slices: a tiny E4B-like checkpoint (fixture M), Google's MatFormer Lab slicing procedure
ported to run on it, and transformers' outputs on the sliced checkpoints (goldens).

Fixture M keeps what makes slicing E4B delicate, at a tiny size: 15 layers in blocks of four sliding
layers and one full one, a different feed-forward width per layer, ten KV-shared layers (layers 5 to
14 reuse the keys and values of layers 3 and 4), sparse first layers.  Its towers are D's.

The slicing procedure is the notebook's (gemma-cookbook, ``Gemma/[Gemma_3n]MatFormer_Lab.ipynb``),
with its E4B constants taken from the config instead (the first KV-shared layer, the sparse layers),
and with ``layer_types`` filtered like the other per-layer lists (the notebook leaves it as it is,
which is only right when the skipped layers are whole blocks at the end of the pattern).

Writes ``<out>/M/``: ``model/`` (the full checkpoint, as make_reference.py writes one, plus
``slicing-configs.csv``: SLICES in the layout of Google's table, for the app to offer),
``golden.safetensors`` and ``golden.json``.  For the full model and every slice in SLICES:
``<s>.input_ids``, ``<s>.logits`` (the prompt's logits from the cached path generate() uses),
``<s>.generated_ids`` / ``<s>.generated_step_logits`` (greedy with a cache) and
``<s>.layer_output.<i>`` (the AltUp stack after each decoder layer).  golden.json records each slice's
config fields and, per tensor of the sliced checkpoint, its shape and the SHA-256 of its float32
bytes, so that an exporter can be checked tensor by tensor without committing the sliced files.

    python make_matformer.py --out ../fixtures
"""

from __future__ import annotations

import argparse
import copy
import csv
import hashlib
import json
import re
import shutil
import sys
import tempfile
from pathlib import Path

import make_reference as ref  # sets the environment (timm's attention path, offline hub) first
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoProcessor, Gemma3nForConditionalGeneration

S, F = ref.S, ref.F
LAYERS = 15
WIDTHS = [96, 128, 112, 128, 160] * 3  # per layer: every block has its own widths, as in a real E4B
M = copy.deepcopy(ref.VARIANTS["D"])
M["seed"] = 7  # the best of seeds 1..12: greedy top1-top2 gaps of at least 0.03, float32 noise at most 8.6e-4
M["text"].update(
    num_hidden_layers=LAYERS,
    intermediate_size=WIDTHS,
    layer_types=[S, S, S, S, F] * 3,
    num_kv_shared_layers=10,  # layers 5..14 read layers 3 (sliding) and 4 (full), like E4B's 20..34
    activation_sparsity_pattern=[0.95, 0.9, 0.95] + [0.0] * 12,
)

# One slice that only narrows feed-forward blocks; one that skips layers here and there (before the
# shared ones, which renumbers the donors, and among them, which shortens the shared run) and narrows
# too; one cut like E2B from E4B (a whole shared block skipped, every block at half width).
SLICES = {
    "narrow": dict(skip=[], ffn=[48, 128, 56, 64, 160, 96, 64, 112, 128, 80, 96, 32, 112, 64, 160]),
    "skip": dict(skip=[1, 7, 8, 11], ffn=[96, 64, 128, 80, 48, 112, 160, 96, 64, 128, 160]),
    "e2b_like": dict(skip=[5, 6, 7, 8, 9], ffn=[w // 2 for w in WIDTHS[:5] + WIDTHS[10:]]),
}
GEN_TOKENS = 12


def slice_checkpoint(src: Path, dst: Path, layers_to_skip: list[int], ffn_hidden_dims: list[int]) -> None:
    """The MatFormer Lab procedure: config first, then every tensor, into a Hugging Face folder."""
    config = json.loads((src / "config.json").read_text())
    tc = config["text_config"]
    num_layers = tc["num_hidden_layers"]
    kept = [i for i in range(num_layers) if i not in layers_to_skip]
    if len(ffn_hidden_dims) != len(kept):
        raise ValueError(f"{len(ffn_hidden_dims)} widths for {len(kept)} kept layers")
    first_shared = num_layers - tc["num_kv_shared_layers"]
    reserved = {first_shared - 2, first_shared - 1}  # the donors of the shared layers
    if reserved & set(layers_to_skip):
        raise ValueError(f"layers {sorted(reserved)} are reserved")
    tc["num_kv_shared_layers"] -= sum(1 for layer in layers_to_skip if layer >= first_shared)
    tc["activation_sparsity_pattern"] = [tc["activation_sparsity_pattern"][i] for i in kept]
    tc["layer_types"] = [tc["layer_types"][i] for i in kept]
    tc["num_hidden_layers"] = len(kept)
    tc["intermediate_size"] = list(ffn_hidden_dims)

    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.name not in ("config.json", "model.safetensors", "config_legacy_format.json"):
            shutil.copy(f, dst / f.name)
    (dst / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")

    renumber = {old: new for new, old in enumerate(kept)}
    out = {}
    with safe_open(str(src / "model.safetensors"), framework="pt") as f:
        for name in f.keys():
            tensor = f.get_tensor(name)
            match = re.search(r"\.layers\.(\d+)\.", name)
            if name.startswith("model.language_model.") and match:
                old = int(match.group(1))
                if old in layers_to_skip:
                    continue
                new = renumber[old]
                name = name.replace(f".layers.{old}.", f".layers.{new}.")
                width = ffn_hidden_dims[new]
                if "mlp.gate_proj.weight" in name or "mlp.up_proj.weight" in name:
                    tensor = tensor[:width, :]
                elif "mlp.down_proj.weight" in name:
                    tensor = tensor[:, :width]
            elif "per_layer_model_projection" in name:
                t = tensor.reshape(num_layers, tensor.shape[0] // num_layers, tensor.shape[1])
                tensor = t[kept].reshape(-1, tensor.shape[1])
            elif "embed_tokens_per_layer" in name:
                t = tensor.reshape(tensor.shape[0], num_layers, tensor.shape[1] // num_layers)
                tensor = t[:, kept].reshape(tensor.shape[0], -1)
            out[name] = tensor.contiguous()
    save_file({k: out[k] for k in sorted(out)}, str(dst / "model.safetensors"), metadata={"format": "pt"})


def digests(path: Path) -> dict[str, list]:
    """Shape and SHA-256 of the float32 bytes of every tensor in a checkpoint."""
    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        return {
            name: [list(f.get_tensor(name).shape), hashlib.sha256(f.get_tensor(name).float().numpy().tobytes()).hexdigest()]
            for name in sorted(f.keys())
        }


def run(model_dir: Path, key: str, G: dict, meta: dict) -> None:
    processor = AutoProcessor.from_pretrained(model_dir)
    model = Gemma3nForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="eager").eval()
    inputs = ref.encode_prompt(processor, ref.make_prompts({"image": "", "wav": ""})["text"])
    lm = model.model.language_model
    rec = ref.Recorder()
    for i, layer in enumerate(lm.layers):
        rec.hook(layer, f"{key}.layer_output.{i}")
    with torch.no_grad():
        out = model(**inputs, use_cache=True)
    rec.close()
    with torch.no_grad():
        toks, step_logits, margins = ref.greedy(model, inputs, GEN_TOKENS)
    assert toks[0] == int(out.logits[0, -1].argmax())
    G[f"{key}.input_ids"] = inputs["input_ids"].clone()
    G[f"{key}.logits"] = out.logits.float().clone()
    G[f"{key}.generated_ids"] = torch.tensor(toks, dtype=torch.long)
    G[f"{key}.generated_step_logits"] = step_logits
    G.update(rec.out)
    # HF's own float32 noise on this prompt: the same model in float64 (a yardstick for tolerances).
    m64 = copy.deepcopy(model).double()
    with torch.no_grad():
        l64 = m64(**inputs, use_cache=True).logits
    del m64
    tc = model.config.text_config
    meta[key] = dict(
        # What the published table calls effective parameters: the decoder without its two
        # embedding tables (the notebook counts them this way too).
        effective_params=int(lm.num_parameters(exclude_embeddings=True)),
        fp32_vs_fp64_logits_max_abs_diff=float((l64 - out.logits.double()).abs().max()),
        generated_ids=toks,
        min_top1_top2_margin=min(margins),
        num_hidden_layers=tc.num_hidden_layers,
        intermediate_size=list(tc.intermediate_size),
        num_kv_shared_layers=tc.num_kv_shared_layers,
        layer_types=list(tc.layer_types),
        activation_sparsity_pattern=list(tc.activation_sparsity_pattern),
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("reference-out"))
    ap.add_argument("--seed", type=int, default=M["seed"])
    args = ap.parse_args()
    M["seed"] = args.seed
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    vdir = args.out / "M"
    if vdir.exists():
        shutil.rmtree(vdir)
    mdir = vdir / "model"
    mdir.mkdir(parents=True)
    ref.save_checkpoint(M, M["seed"], mdir)

    G: dict[str, torch.Tensor] = {}
    meta: dict = {"variant": "M", "seed": M["seed"], "generated_tokens": GEN_TOKENS, "runs": {}, "slices": {}}
    run(mdir, "full", G, meta["runs"])
    with tempfile.TemporaryDirectory() as tmp:
        for name, s in SLICES.items():
            sdir = Path(tmp) / name
            slice_checkpoint(mdir, sdir, s["skip"], s["ffn"])
            run(sdir, name, G, meta["runs"])
            meta["slices"][name] = dict(skip_layers=s["skip"], ffn_dims=s["ffn"], tensors=digests(sdir))
    # The model's own table of slices, in the layout of Google's configs.csv, which the app offers
    # in place of Google's (whose E4B rows do not fit this model).
    with open(mdir / "slicing-configs.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["name", "# Layers", "# Effective Params (B)", "MMLU PT accuracy", "FFN Hidden Dims", "Layers Skipped"])
        for name, s in SLICES.items():
            run_ = meta["runs"][name]
            w.writerow([name, run_["num_hidden_layers"], f"{run_['effective_params'] / 1e9:.6f}", "n/a", str(s["ffn"]), str(s["skip"]) if s["skip"] else ""])
    save_file({k: v.contiguous() for k, v in sorted(G.items())}, str(vdir / "golden.safetensors"))
    (vdir / "golden.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    for key, r in meta["runs"].items():
        print(f"[M/{key}] layers {r['num_hidden_layers']}, shared {r['num_kv_shared_layers']}, "
              f"margin {r['min_top1_top2_margin']:.4f}, fp32-fp64 {r['fp32_vs_fp64_logits_max_abs_diff']:.2e}, "
              f"ids {r['generated_ids']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
