//! The tensors a checkpoint's towers and embedders must hold, with their shapes, derived from
//! `config.json` alone.  [`check_towers`] compares them with the weight files' headers when a
//! model is opened, so a damaged tower is reported then rather than when the first image or
//! clip arrives (the towers' weights themselves are only read on first use).  The text decoder
//! is read at open, so its tensors are checked as they load.

use crate::config::{AudioConfig, Gemma3nConfig};
use crate::loader::Checkpoint;
use crate::vision::arch::{make_divisible, BlockKind, BlockSpec};
use crate::vision::Arch;
use crate::{Error, Result};

/// Expected tensors, as (name, shape).
type Specs = Vec<(String, Vec<usize>)>;

const VISION: &str = "model.vision_tower.timm_model";
const AUDIO: &str = "model.audio_tower";

/// The most problems listed in one error; the rest are counted.
const LISTED: usize = 8;

/// Check every tower and embedder tensor against the headers.  A checkpoint without a
/// modality's embedder (text-only) is not expected to carry that tower.
pub fn check_towers(cfg: &Gemma3nConfig, checkpoint: &Checkpoint) -> Result<()> {
    let mut expected = Specs::new();
    if checkpoint.contains("model.embed_vision.embedding.weight") {
        let v = &cfg.vision_config;
        embedder(
            &mut expected,
            "model.embed_vision",
            v.hidden_size,
            v.vocab_size,
            cfg,
        );
        vision_tower(&mut expected, &Arch::from_config(v)?, v.hidden_size);
    }
    if checkpoint.contains("model.embed_audio.embedding.weight") {
        let a = &cfg.audio_config;
        embedder(
            &mut expected,
            "model.embed_audio",
            a.hidden_size,
            a.vocab_size,
            cfg,
        );
        audio_tower(&mut expected, a);
    }
    let problems: Vec<String> = expected
        .iter()
        .filter_map(|(name, shape)| match checkpoint.shape(name) {
            None => Some(format!(
                "tensor {name} is missing (expected shape {shape:?})"
            )),
            Some(actual) if actual != shape.as_slice() => Some(format!(
                "tensor {name} has shape {actual:?}, config.json implies {shape:?}"
            )),
            Some(_) => None,
        })
        .collect();
    if problems.is_empty() {
        return Ok(());
    }
    let mut message = format!(
        "the checkpoint in {} does not match its config.json: {}",
        checkpoint.dir.display(),
        problems[..problems.len().min(LISTED)].join("; ")
    );
    if problems.len() > LISTED {
        message.push_str(&format!(" (and {} more)", problems.len() - LISTED));
    }
    Err(Error::Checkpoint(message))
}

fn push(out: &mut Specs, name: String, shape: &[usize]) {
    out.push((name, shape.to_vec()));
}

fn embedder(out: &mut Specs, at: &str, width: usize, vocab: usize, cfg: &Gemma3nConfig) {
    push(out, format!("{at}.embedding.weight"), &[vocab, width]);
    push(out, format!("{at}.hard_embedding_norm.weight"), &[width]);
    push(out, format!("{at}.soft_embedding_norm.weight"), &[width]);
    let text = cfg.text_config.hidden_size;
    push(
        out,
        format!("{at}.embedding_projection.weight"),
        &[text, width],
    );
}

/// A conv (`groups` from a group size as `ConvSpec::group_size` has it) and its norm.
fn conv_norm(out: &mut Specs, at: &str, chs: (usize, usize), k: usize, group_size: usize) {
    let groups = chs.1.checked_div(group_size).unwrap_or(1);
    push(
        out,
        format!("{at}.conv.weight"),
        &[chs.1, chs.0 / groups.max(1), k, k],
    );
    push(out, format!("{at}.bn.weight"), &[chs.1]);
}

fn vision_tower(out: &mut Specs, arch: &Arch, width: usize) {
    let stem = arch.stem_size;
    push(
        out,
        format!("{VISION}.conv_stem.conv.weight"),
        &[stem, 3, 3, 3],
    );
    if arch.stem_bias {
        push(out, format!("{VISION}.conv_stem.conv.bias"), &[stem]);
    }
    push(out, format!("{VISION}.conv_stem.bn.weight"), &[stem]);
    for (s, stage) in arch.stages.iter().enumerate() {
        for (i, spec) in stage.iter().enumerate() {
            block(
                out,
                &format!("{VISION}.blocks.{s}.{i}"),
                spec,
                arch.layer_scale,
            );
        }
    }
    let msfa_in = arch
        .msfa_taps
        .iter()
        .map(|&t| arch.tap_channels(t))
        .sum::<usize>();
    let mid = make_divisible(msfa_in as f64 * 2.0);
    conv_norm(
        out,
        &format!("{VISION}.msfa.ffn.pw_exp"),
        (msfa_in, mid),
        1,
        0,
    );
    conv_norm(
        out,
        &format!("{VISION}.msfa.ffn.pw_proj"),
        (mid, width),
        1,
        0,
    );
    push(out, format!("{VISION}.msfa.norm.weight"), &[width]);
}

fn block(out: &mut Specs, at: &str, spec: &BlockSpec, layer_scale: bool) {
    let (inp, chs) = (spec.in_chs, spec.def.out_chs);
    match spec.def.kind {
        BlockKind::EdgeResidual {
            exp_kernel,
            pw_kernel,
            exp_ratio,
            force_in_chs,
            group_size,
        } => {
            let base = if force_in_chs > 0 {
                make_divisible(force_in_chs as f64)
            } else {
                inp
            };
            let mid = make_divisible(base as f64 * exp_ratio);
            let groups = mid.checked_div(group_size).unwrap_or(1).max(1);
            push(
                out,
                format!("{at}.conv_exp.weight"),
                &[mid, inp / groups, exp_kernel, exp_kernel],
            );
            push(out, format!("{at}.bn1.weight"), &[mid]);
            push(
                out,
                format!("{at}.conv_pwl.weight"),
                &[chs, mid, pw_kernel, pw_kernel],
            );
            push(out, format!("{at}.bn2.weight"), &[chs]);
        }
        BlockKind::Uir {
            dw_start,
            dw_mid,
            dw_end,
            exp_ratio,
            group_size,
        } => {
            let mid = make_divisible(inp as f64 * exp_ratio);
            for (name, k, c) in [
                ("dw_start", dw_start, inp),
                ("dw_mid", dw_mid, mid),
                ("dw_end", dw_end, chs),
            ] {
                if k > 0 {
                    conv_norm(out, &format!("{at}.{name}"), (c, c), k, group_size);
                }
            }
            conv_norm(out, &format!("{at}.pw_exp"), (inp, mid), 1, 0);
            conv_norm(out, &format!("{at}.pw_proj"), (mid, chs), 1, 0);
            if layer_scale {
                push(out, format!("{at}.layer_scale.gamma"), &[chs]);
            }
        }
        BlockKind::Mqa {
            num_heads,
            key_dim,
            value_dim,
            kv_stride,
            dw_kernel,
        } => {
            push(out, format!("{at}.norm.weight"), &[inp]);
            push(
                out,
                format!("{at}.attn.query.proj.weight"),
                &[num_heads * key_dim, inp, 1, 1],
            );
            for (branch, dim) in [("key", key_dim), ("value", value_dim)] {
                if kv_stride > 1 {
                    push(
                        out,
                        format!("{at}.attn.{branch}.down_conv.weight"),
                        &[inp, 1, dw_kernel, dw_kernel],
                    );
                    push(out, format!("{at}.attn.{branch}.norm.weight"), &[inp]);
                }
                push(
                    out,
                    format!("{at}.attn.{branch}.proj.weight"),
                    &[dim, inp, 1, 1],
                );
            }
            push(
                out,
                format!("{at}.attn.output.proj.weight"),
                &[chs, num_heads * value_dim, 1, 1],
            );
            if layer_scale {
                push(out, format!("{at}.layer_scale.gamma"), &[chs]);
            }
        }
    }
}

fn audio_tower(out: &mut Specs, cfg: &AudioConfig) {
    let sscp = format!("{AUDIO}.subsample_conv_projection");
    for idx in 0..2 {
        let c_in = if idx == 0 {
            1
        } else {
            cfg.sscp_conv_channel_size[idx - 1]
        };
        let c_out = cfg.sscp_conv_channel_size[idx];
        let k = &cfg.sscp_conv_kernel_size[idx];
        push(
            out,
            format!("{sscp}.conv_{idx}.conv.weight"),
            &[c_out, c_in, k[0], k[1]],
        );
        push(out, format!("{sscp}.conv_{idx}.norm.weight"), &[c_out]);
    }
    let d = cfg.hidden_size;
    let width = crate::audio::sscp::input_proj_width(cfg);
    push(out, format!("{sscp}.input_proj_linear.weight"), &[d, width]);
    let head_dim = d / cfg.conf_num_attention_heads.max(1);
    for l in 0..cfg.conf_num_hidden_layers {
        let at = format!("{AUDIO}.conformer.{l}");
        for ffw in ["ffw_layer_start", "ffw_layer_end"] {
            push(out, format!("{at}.{ffw}.pre_layer_norm.weight"), &[d]);
            push(out, format!("{at}.{ffw}.ffw_layer_1.weight"), &[4 * d, d]);
            push(out, format!("{at}.{ffw}.ffw_layer_2.weight"), &[d, 4 * d]);
            push(out, format!("{at}.{ffw}.post_layer_norm.weight"), &[d]);
        }
        push(out, format!("{at}.attention.pre_attn_norm.weight"), &[d]);
        push(
            out,
            format!("{at}.attention.attn.per_dim_scale"),
            &[head_dim],
        );
        for proj in [
            "q_proj",
            "k_proj",
            "v_proj",
            "relative_position_embedding.pos_proj",
        ] {
            push(out, format!("{at}.attention.attn.{proj}.weight"), &[d, d]);
        }
        push(out, format!("{at}.attention.post.weight"), &[d, d]);
        push(out, format!("{at}.attention.post_norm.weight"), &[d]);
        push(out, format!("{at}.lconv1d.pre_layer_norm.weight"), &[d]);
        push(
            out,
            format!("{at}.lconv1d.linear_start.weight"),
            &[2 * d, d],
        );
        push(
            out,
            format!("{at}.lconv1d.depthwise_conv1d.weight"),
            &[d, 1, cfg.conf_conv_kernel_size],
        );
        push(out, format!("{at}.lconv1d.conv_norm.weight"), &[d]);
        push(out, format!("{at}.lconv1d.linear_end.weight"), &[d, d]);
        push(out, format!("{at}.norm.weight"), &[d]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The spec names exactly the tower and embedder tensors of every committed checkpoint.
    #[test]
    fn spec_matches_the_committed_checkpoints() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
        for variant in ["C", "D", "E", "Q"] {
            let dir = root.join(variant).join("model");
            let cfg = Gemma3nConfig::from_file(&dir.join("config.json")).unwrap();
            let checkpoint = Checkpoint::open(&dir).unwrap();
            let mut expected = Specs::new();
            let v = &cfg.vision_config;
            embedder(
                &mut expected,
                "model.embed_vision",
                v.hidden_size,
                v.vocab_size,
                &cfg,
            );
            vision_tower(&mut expected, &Arch::from_config(v).unwrap(), v.hidden_size);
            let a = &cfg.audio_config;
            embedder(
                &mut expected,
                "model.embed_audio",
                a.hidden_size,
                a.vocab_size,
                &cfg,
            );
            audio_tower(&mut expected, a);
            let mut expected: Vec<_> = expected.into_iter().map(|(n, _)| n).collect();
            expected.sort();
            let mut present: Vec<String> = checkpoint
                .names()
                .filter(|n| !n.starts_with("model.language_model."))
                .map(str::to_owned)
                .collect();
            present.sort();
            assert_eq!(expected, present, "{variant}");
            check_towers(&cfg, &checkpoint).unwrap_or_else(|e| panic!("{variant}: {e}"));
        }
    }
}
