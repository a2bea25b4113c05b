"""Tiny random models built from real fixture configs with shrunk sizes (no downloads)."""

from __future__ import annotations

import copy
from typing import Any

SHRINK = {
    "num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 96, "num_attention_heads": 4,
    "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 128, "moe_intermediate_size": 32,
    "shared_expert_intermediate_size": 32, "n_routed_experts": 4, "num_local_experts": 4, "num_experts": 4,
    "num_experts_per_tok": 2, "n_shared_experts": 1, "n_group": 1, "topk_group": 1, "first_k_dense_replace": 1,
    "q_lora_rank": 32, "kv_lora_rank": 16, "qk_rope_head_dim": 8, "qk_nope_head_dim": 8, "v_head_dim": 16,
    "sliding_window": 32, "max_window_layers": 2, "decoder_sparse_step": 1,
}
ALWAYS = ("num_hidden_layers", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
          "head_dim", "vocab_size")
VISION_SHRINK = {"depth": 1, "hidden_size": 32, "num_heads": 2, "intermediate_size": 32, "out_hidden_size": 64,
                 "num_hidden_layers": 1, "num_attention_heads": 2, "embed_dim": 32, "patch_size": 14,
                 "image_size": 28, "fullatt_block_indexes": [0], "deepstack_visual_indexes": [0]}
TOKENS = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "image_token_id": 120, "video_token_id": 121,
          "vision_start_token_id": 122, "vision_end_token_id": 123, "image_token_index": 120,
          "boi_token_index": 124, "eoi_token_index": 125, "vision_token_id": 126}


def shrink(config: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(config)
    out.pop("auto_map", None)
    out.pop("quantization_config", None)
    text = out["text_config"] if isinstance(out.get("text_config"), dict) else out
    for node in [out, out.get("text_config")]:
        if isinstance(node, dict):
            for key, value in SHRINK.items():
                if key in node or (node is text and key in ALWAYS):
                    node[key] = value
            if "qk_rope_head_dim" in node:  # MLA: the rotary part is qk_rope_head_dim, head_dim follows it
                node.pop("head_dim", None)
            if node is text and node.get("model_type", "").startswith("gemma3"):
                node["sliding_window_pattern"] = 2  # one sliding and one full-attention layer
            if isinstance(node.get("layer_types"), list):
                node["layer_types"] = node["layer_types"][: SHRINK["num_hidden_layers"]]
            if "rope_scaling" in node and isinstance(node["rope_scaling"], dict) and "mrope_section" in node["rope_scaling"]:
                node["rope_scaling"]["mrope_section"] = [2, 3, 3]  # sums to head_dim / 2 = 8
    vision = out.get("vision_config")
    if isinstance(vision, dict):
        for key, value in VISION_SHRINK.items():
            if key in vision:
                vision[key] = value
    for key, value in TOKENS.items():
        if key in out:
            out[key] = value
        if isinstance(out.get("text_config"), dict) and key in out["text_config"]:
            out["text_config"][key] = value
    return out


def build(config_dict: dict[str, Any], seed: int = 0):
    """A random-weight model of the fixture's architecture, in eval mode."""
    import torch
    from transformers import AutoConfig

    from ropekit.landing.rotary import model_class_for

    torch.manual_seed(seed)
    config = AutoConfig.for_model(**config_dict)
    model = model_class_for(config)._from_config(config)
    return model.eval()
