"""The tiny fixtures in Hugging Face layouts, for the converter's HF tests.

Run from the repository root after make_fixtures.py:
    pip install safetensors
    python3 tools/reference/make_hf_fixtures.py
Writes tests/fixtures/tiny/hf/:
  llama/  config.json, model.safetensors (HF LlamaForCausalLM key names, with
          HF's q/k row permutation applied, as transformers' conversion script
          does); the tests add ../llama/tokenizer.model beside them
  clip.safetensors  (HF CLIPVisionModelWithProjection-style keys: separate
          q/k/v projections, `visual_projection.weight` [embed, width])
The weights are exactly the Meta/OpenAI fixtures', so converting either layout
must give the same packages.
"""
import json
import os

import torch
from safetensors.torch import save_file

FIX = "tests/fixtures/tiny"
OUT = f"{FIX}/hf"
os.makedirs(f"{OUT}/llama", exist_ok=True)

params = json.load(open(f"{FIX}/llama/params.json"))
meta = torch.load(f"{FIX}/llama/consolidated.00.pth", map_location="cpu")
dim, n_heads, n_layers = params["dim"], params["n_heads"], params["n_layers"]


def permute(w):
    # Meta's interleaved RoPE pairs -> HF's rotate-half row order.
    d1, d2 = w.shape
    return w.view(n_heads, d1 // n_heads // 2, 2, d2).transpose(1, 2).reshape(d1, d2)


hf = {"model.embed_tokens.weight": meta["tok_embeddings.weight"], "model.norm.weight": meta["norm.weight"], "lm_head.weight": meta["output.weight"]}
for i in range(n_layers):
    p, q = f"layers.{i}.", f"model.layers.{i}."
    hf[q + "self_attn.q_proj.weight"] = permute(meta[p + "attention.wq.weight"])
    hf[q + "self_attn.k_proj.weight"] = permute(meta[p + "attention.wk.weight"])
    hf[q + "self_attn.v_proj.weight"] = meta[p + "attention.wv.weight"]
    hf[q + "self_attn.o_proj.weight"] = meta[p + "attention.wo.weight"]
    hf[q + "mlp.gate_proj.weight"] = meta[p + "feed_forward.w1.weight"]
    hf[q + "mlp.down_proj.weight"] = meta[p + "feed_forward.w2.weight"]
    hf[q + "mlp.up_proj.weight"] = meta[p + "feed_forward.w3.weight"]
    hf[q + "input_layernorm.weight"] = meta[p + "attention_norm.weight"]
    hf[q + "post_attention_layernorm.weight"] = meta[p + "ffn_norm.weight"]
save_file({k: v.contiguous() for k, v in hf.items()}, f"{OUT}/llama/model.safetensors")
ffn = meta["layers.0.feed_forward.w1.weight"].shape[0]
json.dump({
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": dim, "intermediate_size": ffn,
    "num_attention_heads": n_heads, "num_hidden_layers": n_layers, "num_key_value_heads": n_heads,
    "rms_norm_eps": params["norm_eps"], "vocab_size": meta["tok_embeddings.weight"].shape[0],
    "max_position_embeddings": 2048, "rope_theta": 10000.0, "torch_dtype": "float16",
}, open(f"{OUT}/llama/config.json", "w"), indent=1)

clip = torch.load(f"{FIX}/clip.pth", map_location="cpu")
v = {k[len("visual."):]: t for k, t in clip.items() if isinstance(t, torch.Tensor) and k.startswith("visual.")}
width = v["conv1.weight"].shape[0]
out = {
    "vision_model.embeddings.patch_embedding.weight": v["conv1.weight"],
    "vision_model.embeddings.class_embedding": v["class_embedding"],
    "vision_model.embeddings.position_embedding.weight": v["positional_embedding"],
    "vision_model.pre_layrnorm.weight": v["ln_pre.weight"], "vision_model.pre_layrnorm.bias": v["ln_pre.bias"],
    "vision_model.post_layernorm.weight": v["ln_post.weight"], "vision_model.post_layernorm.bias": v["ln_post.bias"],
    "visual_projection.weight": v["proj"].t(),
}
i = 0
while f"transformer.resblocks.{i}.attn.in_proj_weight" in v:
    p, q = f"transformer.resblocks.{i}.", f"vision_model.encoder.layers.{i}."
    w, b = v[p + "attn.in_proj_weight"], v[p + "attn.in_proj_bias"]
    for j, n in enumerate(["q", "k", "v"]):
        out[q + f"self_attn.{n}_proj.weight"] = w[j * width:(j + 1) * width]
        out[q + f"self_attn.{n}_proj.bias"] = b[j * width:(j + 1) * width]
    out[q + "self_attn.out_proj.weight"] = v[p + "attn.out_proj.weight"]
    out[q + "self_attn.out_proj.bias"] = v[p + "attn.out_proj.bias"]
    for a, h in [("ln_1", "layer_norm1"), ("ln_2", "layer_norm2")]:
        out[q + h + ".weight"] = v[p + a + ".weight"]
        out[q + h + ".bias"] = v[p + a + ".bias"]
    out[q + "mlp.fc1.weight"] = v[p + "mlp.c_fc.weight"]
    out[q + "mlp.fc1.bias"] = v[p + "mlp.c_fc.bias"]
    out[q + "mlp.fc2.weight"] = v[p + "mlp.c_proj.weight"]
    out[q + "mlp.fc2.bias"] = v[p + "mlp.c_proj.bias"]
    i += 1
save_file({k: t.contiguous() for k, t in out.items()}, f"{OUT}/clip.safetensors")
print("wrote", sorted(os.listdir(OUT)), sorted(os.listdir(f"{OUT}/llama")))
