#!/usr/bin/env python3
"""Check that transformers loads a slice written by `gemma-chat slice` and gives the goldens of
make_matformer.py for it (fixture M):

    gemma-chat slice --model tests/fixtures/M/model --ffn-dims ... --skip-layers ... --out /tmp/s
    python check_exported_slice.py /tmp/s skip
"""

import json
import sys
from pathlib import Path

import make_reference as ref  # the environment first, as the generator sets it
import torch
from safetensors.torch import load_file
from transformers import Gemma3nForConditionalGeneration

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "M"


def main() -> int:
    exported, key = Path(sys.argv[1]), sys.argv[2]
    torch.set_num_threads(1)
    model = Gemma3nForConditionalGeneration.from_pretrained(exported, dtype=torch.float32, attn_implementation="eager").eval()
    golden = load_file(str(FIXTURE / "golden.safetensors"))
    with torch.no_grad():
        logits = model(input_ids=golden[f"{key}.input_ids"], use_cache=True).logits
        toks, _, _ = ref.greedy(model, {"input_ids": golden[f"{key}.input_ids"]}, len(golden[f"{key}.generated_ids"]))
    diff = float((logits - golden[f"{key}.logits"]).abs().max())
    same = toks == golden[f"{key}.generated_ids"].tolist()
    print(json.dumps({"slice": key, "layers": model.config.text_config.num_hidden_layers, "logits_max_abs_diff": diff, "greedy_ids_identical": same}))
    return 0 if diff == 0.0 and same else 1


if __name__ == "__main__":
    sys.exit(main())
