"""Independent timm -> Hugging Face weight mappings for the tiny test models (ViT and Swin)."""

from __future__ import annotations

import re

import torch


def _split_qkv(out: dict, prefix: str, weight: torch.Tensor, bias: torch.Tensor) -> None:
    for name, w, b in zip(
        ("q_proj", "k_proj", "v_proj"), weight.chunk(3), bias.chunk(3), strict=True
    ):
        out[f"{prefix}.{name}.weight"] = w
        out[f"{prefix}.{name}.bias"] = b


def timm_vit_to_hf(state: dict) -> dict:
    out = {
        "vit.embeddings.cls_token": state["cls_token"],
        "vit.embeddings.position_embeddings": state["pos_embed"],
        "vit.embeddings.patch_embeddings.projection.weight": state["patch_embed.proj.weight"],
        "vit.embeddings.patch_embeddings.projection.bias": state["patch_embed.proj.bias"],
        "vit.layernorm.weight": state["norm.weight"],
        "vit.layernorm.bias": state["norm.bias"],
        "classifier.weight": state["head.weight"],
        "classifier.bias": state["head.bias"],
    }
    blocks = {int(k.split(".")[1]) for k in state if k.startswith("blocks.")}
    for i in blocks:
        src, dst = f"blocks.{i}", f"vit.layers.{i}"
        for a, b in (
            ("norm1", "layernorm_before"),
            ("norm2", "layernorm_after"),
            ("mlp.fc1", "mlp.fc1"),
            ("mlp.fc2", "mlp.fc2"),
            ("attn.proj", "attention.o_proj"),
        ):
            for p in ("weight", "bias"):
                out[f"{dst}.{b}.{p}"] = state[f"{src}.{a}.{p}"]
        _split_qkv(
            out, f"{dst}.attention", state[f"{src}.attn.qkv.weight"], state[f"{src}.attn.qkv.bias"]
        )
    return out


def timm_swin_to_hf(state: dict) -> dict:
    out = {
        "swin.embeddings.patch_embeddings.projection.weight": state["patch_embed.proj.weight"],
        "swin.embeddings.patch_embeddings.projection.bias": state["patch_embed.proj.bias"],
        "swin.embeddings.norm.weight": state["patch_embed.norm.weight"],
        "swin.embeddings.norm.bias": state["patch_embed.norm.bias"],
        "swin.layernorm.weight": state["norm.weight"],
        "swin.layernorm.bias": state["norm.bias"],
        "classifier.weight": state["head.fc.weight"],
        "classifier.bias": state["head.fc.bias"],
    }
    renames = {
        "norm1": "layernorm_before",
        "norm2": "layernorm_after",
        "attn.proj": "attention.o_proj",
        "mlp.fc1": "mlp.fc1",
        "mlp.fc2": "mlp.fc2",
        "attn.relative_position_bias_table": "attention.relative_position_bias.relative_position_bias_table",
    }
    for key, value in state.items():
        m = re.match(
            r"layers\.(\d+)\.blocks\.(\d+)\.(.+)\.(weight|bias|relative_position_bias_table)$", key
        )
        if m:
            s, b, mod, p = m.groups()
            dst = f"swin.encoder.layers.{s}.blocks.{b}"
            if p == "relative_position_bias_table":
                out[f"{dst}.{renames['attn.relative_position_bias_table']}"] = value
            elif mod == "attn.qkv":
                if p == "weight":
                    _split_qkv(out, f"{dst}.attention", value, state[key.replace("weight", "bias")])
            else:
                out[f"{dst}.{renames[mod]}.{p}"] = value
            continue
        m = re.match(r"layers\.(\d+)\.downsample\.(.+)$", key)
        if m:  # timm merges at the start of stage s, HF at the end of stage s-1
            s, rest = m.groups()
            out[f"swin.encoder.layers.{int(s) - 1}.downsample.{rest}"] = value
    return out
