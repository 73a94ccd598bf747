"""Golden outputs of a tiny timm MobileNet-V5 encoder with the options the C/D fixtures do not use.

C and D cover the Gemma 3n block kinds at square sizes with average-pooled MSFA outputs.  This
fixture adds: a non-square input, five strided stages (timm turns the last stride into dilation to
keep output_stride 32), a UIR with a `dw_end` conv (`p` kernel), `noskip` blocks, a grouped
edge-residual conv (`gs`), an odd-sized depthwise kernel under dilation, MSFA taps given as
`msfa_indices`, and an output grid the MSFA must reach by bilinear resizing (not divisible).

    /work/venv-ref/bin/python tests/reference/make_vision_extra.py --out tests/fixtures/vision_extra

Writes `model_args.json` (the `vision_config.model_args` a checkpoint would carry) and
`golden.safetensors` (weights under `model.vision_tower.timm_model.`, `pixel_values`, `stem_output`,
`stage_output.<i>`, `output`).  Pinned versions as in requirements.txt; fp32, one thread.
"""

import argparse
import copy
import json
import os
from pathlib import Path

os.environ["TIMM_FUSED_ATTN"] = "0"  # explicit softmax(q k^T) v, as in make_reference.py

import torch  # noqa: E402
import timm  # noqa: E402
from timm.models._efficientnet_builder import decode_arch_def  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

ARCH_DEF = [
    ["er_r1_k3_s2_e3_c16", "er_r1_k3_s1_e2_gs4_c16", "er_r1_k3_s1_e2_c16_noskip"],
    ["uir_r1_a3_k5_s2_e4_c24", "uir_r1_a3_k0_p3_s1_e2_c24"],
    ["uir_r1_a5_k5_s2_e3_c32", "mqa_r1_k3_h2_v2_s1_d8_c32", "uir_r1_a0_k0_s1_e2_c32"],
    ["uir_r1_a0_k3_p5_s2_e2_c40", "mqa_r1_k3_h4_s1_d6_c40", "uir_r1_a3_k0_s1_e2_c40_noskip"],
    ["uir_r1_a5_k3_s2_e2_c48", "uir_r1_a3_k0_s1_e2_c48"],
]
MODEL_ARGS = dict(stem_size=12, msfa_indices=[2, 3, 4, 5], msfa_output_resolution=3)
INPUT_HW = (72, 88)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.manual_seed(7)
    torch.set_num_threads(1)
    model_args = dict(block_args=decode_arch_def(ARCH_DEF), **MODEL_ARGS)
    pristine = copy.deepcopy(model_args)  # timm's builder mutates the block dicts
    model = timm.create_model("mobilenetv5_300m_enc", pretrained=False, **model_args).eval()
    with torch.no_grad():
        # Re-draw every parameter: timm's init leaves layer scales at 1e-5 and norms at 1.
        for name, p in model.named_parameters():
            if p.ndim == 1:
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn_like(p) / fan_in**0.5)

    g = {}
    hooks = [model.conv_stem.register_forward_hook(lambda m, i, o: g.__setitem__("stem_output", o.clone()))]
    for i, stage in enumerate(model.blocks):
        hooks.append(stage.register_forward_hook(lambda m, inp, o, i=i: g.__setitem__(f"stage_output.{i}", o.clone())))
    x = torch.rand(1, 3, *INPUT_HW)
    with torch.no_grad():
        out = model(x)
    for h in hooks:
        h.remove()
    g["pixel_values"] = x
    g["output"] = out
    prefix = "model.vision_tower.timm_model."
    weights = {prefix + k: v.contiguous() for k, v in model.state_dict().items()}
    args.out.mkdir(parents=True, exist_ok=True)
    save_file({**weights, **{k: v.contiguous() for k, v in g.items()}}, str(args.out / "golden.safetensors"))
    (args.out / "model_args.json").write_text(json.dumps(pristine, indent=1) + "\n")
    print({k: list(v.shape) for k, v in g.items()})


if __name__ == "__main__":
    main()
