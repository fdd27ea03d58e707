#!/usr/bin/env python3
"""Writes the tiny seeded LLaMA-Adapter V2 checkpoints and golden outputs.

Regenerate (from the repository root; needs torch, numpy, sentencepiece; CPU only,
about a minute on 2 cores):

    python3 tools/reference/make_fixtures.py

Output: tests/fixtures/tiny/ (see the README.md written there). The run is
deterministic: the same torch version writes byte-identical files (the script uses one
thread and fixed seeds). The input image and the tokenizer are copied from
../shared/fixtures (override the shared root with LLAMA_ADAPTER_SHARED=/path/to/shared).

What it does:
 1. Seeded random init of a tiny Meta-layout LLaMA (fp16 like Meta's files), a tiny
    OpenAI-layout CLIP (fp16 linear/conv weights, fp32 LayerNorm/embeddings) and three
    adapter checkpoints ({'model', 'config'}, fp32): bias, lora, early.
 2. Reloads every file from disk (so goldens use exactly the stored, rounded values) and
    runs tools/reference/model.py in fp32 to write the goldens under golden/.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True  # keep tools/reference free of __pycache__
sys.path.insert(0, HERE)
import model as ref  # noqa: E402

REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
SHARED = os.environ.get("LLAMA_ADAPTER_SHARED", os.path.join(REPO, "..", "shared"))
OUT = os.path.join(REPO, "tests", "fixtures", "tiny")
GOLD = os.path.join(OUT, "golden")

SEED = 1234
INSTRUCTION = "Describe this image."
MAX_NEW_TOKENS = 24
FORCED_POSITIONS = 64
N_RANDOM_COLS = 256  # random vocab columns kept in the *_logits_sub.npy goldens
TOPK = 8  # forced-run top-k stored per position
TOPK_COLS = 4  # top-k ids of every prompt/step row added to logit_cols

# --- tiny dims ---------------------------------------------------------------------------
LLAMA_PARAMS = dict(dim=32, multiple_of=32, n_heads=4, n_layers=4, norm_eps=1e-06, vocab_size=-1)
VOCAB = 32000
CLIP_WIDTH, CLIP_LAYERS, CLIP_PATCH, CLIP_RES, CLIP_OUT = 64, 2, 14, 224, 32
ADAPTER_COMMON = dict(query_len=10, query_layer=3, v_embed_dim=32, v_depth=2, v_num_heads=2, v_mlp_ratio=4.0)
ADAPTERS = {
    "bias": dict(w_bias=True, w_lora=False, lora_rank=16, **ADAPTER_COMMON),
    "lora": dict(w_bias=True, w_lora=True, lora_rank=4, **ADAPTER_COMMON),
    "early": dict(w_bias=True, w_lora=False, lora_rank=16, fusion="early_prefix", early_layers=1,
                  w_scale=True, **ADAPTER_COMMON),
}

# --- init scales (chosen so attention is not uniform and logits are peaked) ----------------
OUT_HEAD_STD = 3.0  # output.weight std; logits std ~ OUT_HEAD_STD * sqrt(dim) * |norm.weight|
QK_GAIN = 1.5  # wq/wk std = QK_GAIN / sqrt(dim)
BIAS_STD = 0.2


def randn(*shape, std=1.0):
    return torch.randn(*shape) * std


def norm_weight(n):
    return 1.0 + 0.1 * torch.randn(n)


# ============================================================================ checkpoints


def make_llama():
    torch.manual_seed(SEED + 1)
    p = LLAMA_PARAMS
    D, L = p["dim"], p["n_layers"]
    hd = D // p["n_heads"]
    Fh = ref.AdapterConfig.ffn_hidden_of(D, p["multiple_of"])
    sd = {"tok_embeddings.weight": randn(VOCAB, D)}
    for i in range(L):
        a, f = f"layers.{i}.attention", f"layers.{i}.feed_forward"
        sd[f"{a}.wq.weight"] = randn(D, D, std=QK_GAIN / D ** 0.5)
        sd[f"{a}.wk.weight"] = randn(D, D, std=QK_GAIN / D ** 0.5)
        sd[f"{a}.wv.weight"] = randn(D, D, std=1 / D ** 0.5)
        sd[f"{a}.wo.weight"] = randn(D, D, std=1 / D ** 0.5)
        sd[f"{f}.w1.weight"] = randn(Fh, D, std=1 / D ** 0.5)
        sd[f"{f}.w2.weight"] = randn(D, Fh, std=1 / Fh ** 0.5)
        sd[f"{f}.w3.weight"] = randn(Fh, D, std=1 / D ** 0.5)
        sd[f"layers.{i}.attention_norm.weight"] = norm_weight(D)
        sd[f"layers.{i}.ffn_norm.weight"] = norm_weight(D)
    sd["norm.weight"] = norm_weight(D)
    sd["output.weight"] = randn(VOCAB, D, std=OUT_HEAD_STD)
    sd["rope.freqs"] = 1.0 / (10000.0 ** (torch.arange(0, hd, 2)[: hd // 2].float() / hd))
    sd = {k: v.to(torch.float16).contiguous() for k, v in sd.items()}

    d = os.path.join(OUT, "llama")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "params.json"), "w") as f:
        json.dump(p, f)
    torch.save(sd, os.path.join(d, "consolidated.00.pth"))
    shutil.copyfile(os.path.join(SHARED, "fixtures", "tokenizer", "llama-tokenizer.model"),
                    os.path.join(d, "tokenizer.model"))


def make_clip():
    torch.manual_seed(SEED + 2)
    W, P = CLIP_WIDTH, CLIP_PATCH
    n_tok = (CLIP_RES // P) ** 2 + 1
    h16, f32 = torch.float16, torch.float32
    sd = {}

    def put(k, v, dt):
        sd[k] = v.to(dt).contiguous()

    put("visual.class_embedding", randn(W, std=0.5), f32)
    put("visual.positional_embedding", randn(n_tok, W, std=0.5), f32)
    put("visual.proj", randn(W, CLIP_OUT, std=1 / W ** 0.5), h16)
    put("visual.conv1.weight", randn(W, 3, P, P, std=1 / (3 * P * P) ** 0.5), h16)
    put("visual.ln_pre.weight", norm_weight(W), f32)
    put("visual.ln_pre.bias", randn(W, std=0.1), f32)
    for i in range(CLIP_LAYERS):
        b = f"visual.transformer.resblocks.{i}."
        put(b + "attn.in_proj_weight", randn(3 * W, W, std=QK_GAIN / W ** 0.5), h16)
        put(b + "attn.in_proj_bias", randn(3 * W, std=BIAS_STD), h16)
        put(b + "attn.out_proj.weight", randn(W, W, std=1 / W ** 0.5), h16)
        put(b + "attn.out_proj.bias", randn(W, std=BIAS_STD), h16)
        put(b + "ln_1.weight", norm_weight(W), f32)
        put(b + "ln_1.bias", randn(W, std=0.1), f32)
        put(b + "mlp.c_fc.weight", randn(4 * W, W, std=1 / W ** 0.5), h16)
        put(b + "mlp.c_fc.bias", randn(4 * W, std=BIAS_STD), h16)
        put(b + "mlp.c_proj.weight", randn(W, 4 * W, std=1 / (4 * W) ** 0.5), h16)
        put(b + "mlp.c_proj.bias", randn(W, std=BIAS_STD), h16)
        put(b + "ln_2.weight", norm_weight(W), f32)
        put(b + "ln_2.bias", randn(W, std=0.1), f32)
    put("visual.ln_post.weight", norm_weight(W), f32)
    put("visual.ln_post.bias", randn(W, std=0.1), f32)
    # Text-tower leftovers that a converter must skip (the real file has them too).
    put("positional_embedding", randn(8, 32, std=0.01), f32)  # TEXT positional embedding
    put("token_embedding.weight", randn(16, 32, std=0.02), h16)
    put("text_projection", randn(32, 32, std=0.1), h16)
    put("ln_final.weight", torch.ones(32), f32)
    put("ln_final.bias", torch.zeros(32), f32)
    put("logit_scale", torch.tensor(4.6052), f32)  # 0-dim tensor
    # Non-tensor integer entries (CLIP's build_model deletes these).
    sd["input_resolution"] = CLIP_RES
    sd["context_length"] = 77
    sd["vocab_size"] = 49408
    torch.save(sd, os.path.join(OUT, "clip.pth"))


def make_adapter(name, cfg, seed):
    torch.manual_seed(seed)
    p = LLAMA_PARAMS
    D, L, H = p["dim"], p["n_layers"], p["n_heads"]
    Fh = ref.AdapterConfig.ffn_hidden_of(D, p["multiple_of"])
    V, ql, qn = cfg["v_embed_dim"], cfg["query_layer"], cfg["query_len"]
    Vm = int(V * cfg["v_mlp_ratio"])
    sd = {}
    # visual branch (spec 3.3)
    sd["clip_proj.weight"] = randn(V, CLIP_OUT, std=1 / CLIP_OUT ** 0.5)
    sd["clip_proj.bias"] = randn(V, std=BIAS_STD)
    sd["clip_proj_norm.weight"] = norm_weight(V)
    sd["clip_proj_norm.bias"] = randn(V, std=0.1)
    sd["visual_query.weight"] = randn(qn, V)
    for i in range(cfg["v_depth"]):
        b = f"visual_blocks.{i}."
        sd[b + "norm1.weight"] = norm_weight(V)
        sd[b + "norm1.bias"] = randn(V, std=0.1)
        sd[b + "attn.qkv.weight"] = randn(3 * V, V, std=QK_GAIN / V ** 0.5)
        sd[b + "attn.qkv.bias"] = randn(3 * V, std=BIAS_STD)
        sd[b + "attn.proj.weight"] = randn(V, V, std=1 / V ** 0.5)
        sd[b + "attn.proj.bias"] = randn(V, std=BIAS_STD)
        sd[b + "norm2.weight"] = norm_weight(V)
        sd[b + "norm2.bias"] = randn(V, std=0.1)
        sd[b + "mlp.fc1.weight"] = randn(Vm, V, std=1 / V ** 0.5)
        sd[b + "mlp.fc1.bias"] = randn(Vm, std=BIAS_STD)
        sd[b + "mlp.fc2.weight"] = randn(V, Vm, std=1 / Vm ** 0.5)
        sd[b + "mlp.fc2.bias"] = randn(V, std=BIAS_STD)
    sd["visual_proj.weight"] = randn(D, V, std=1 / V ** 0.5)
    sd["visual_proj.bias"] = randn(D, std=BIAS_STD)
    sd["visual_proj_norm.weight"] = norm_weight(D)
    sd["visual_proj_norm.bias"] = randn(D, std=0.1)
    sd["adapter_query.weight"] = randn(ql * qn, D)
    # LLaMA-side tensors
    r = cfg["lora_rank"]
    for i in range(L):
        a, f = f"llama.layers.{i}.attention", f"llama.layers.{i}.feed_forward"
        sd[f"{a}.gate"] = torch.rand(1, H, 1, 1) * 2 - 1
        sd[f"{a}.wq.bias"] = randn(D, std=BIAS_STD)
        sd[f"{a}.wo.bias"] = randn(D, std=BIAS_STD)
        sd[f"{f}.w1.bias"] = randn(Fh, std=BIAS_STD)
        sd[f"{f}.w2.bias"] = randn(D, std=BIAS_STD)
        sd[f"{f}.w3.bias"] = randn(Fh, std=BIAS_STD)
        sd[f"llama.layers.{i}.attention_norm.weight"] = norm_weight(D)
        sd[f"llama.layers.{i}.ffn_norm.weight"] = norm_weight(D)
        if cfg.get("w_lora"):
            for n in ("wq", "wk", "wv", "wo"):
                sd[f"{a}.lora_{n}_l1.weight"] = randn(r, D, std=1 / D ** 0.5)
                sd[f"{a}.lora_{n}_l2.weight"] = randn(D, r, std=0.5 / r ** 0.5)
            for n, (o, i_) in (("w1", (Fh, D)), ("w2", (D, Fh)), ("w3", (Fh, D))):
                sd[f"{f}.lora_{n}_l1.weight"] = randn(r, i_, std=1 / i_ ** 0.5)
                sd[f"{f}.lora_{n}_l2.weight"] = randn(o, r, std=0.5 / r ** 0.5)
            sd[f"{a}.new_gate"] = torch.rand(1, 1, 1, 1) + 0.5  # in [0.5, 1.5)
        if cfg.get("fusion") == "early_prefix" and i < cfg["early_layers"]:
            sd[f"{a}.visual_gate"] = torch.rand(1, H, 1, 1) * 2 - 1
        if cfg.get("w_scale"):
            for n, o in (("wq", D), ("wk", D), ("wv", D), ("wo", D)):
                sd[f"{a}.{n}.scale"] = torch.rand(o) + 0.5
            for n, o in (("w1", Fh), ("w2", D), ("w3", Fh)):
                sd[f"{f}.{n}.scale"] = torch.rand(o) + 0.5
    sd["llama.norm.weight"] = norm_weight(D)
    sd = {k: v.to(torch.float32).contiguous() for k, v in sd.items()}
    torch.save({"model": sd, "config": cfg}, os.path.join(OUT, f"adapter_{name}.pth"))


# ============================================================================ goldens


def save_npy(path, arr):
    arr = np.ascontiguousarray(np.asarray(arr, dtype=np.float32).astype("<f4"))
    np.save(path, arr)


def save_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")


def top2_margin(logits: torch.Tensor):
    t = torch.topk(logits, 2, dim=-1).values
    return (t[..., 0] - t[..., 1])


def ablations(name, cfg, llama_sd, asd, vq, prompt_ids, p_logits):
    """How far the prompt logits move when one feature is dropped (shows the goldens
    discriminate each feature). Returns {label: (max |diff|, argmax flips)}."""
    from dataclasses import replace

    def run(c=cfg, sd=asd, **kw):
        lg, _ = ref.Decoder(c, llama_sd, sd, vq, **kw).forward(torch.tensor([prompt_ids]), 0)
        lg = lg[0]
        return float((lg - p_logits).abs().max()), int((lg.argmax(-1) != p_logits.argmax(-1)).sum())

    no_gate = {k: (torch.zeros_like(v) if k.endswith(".gate") or k.endswith(".visual_gate") else v)
               for k, v in asd.items()}
    base_norms = {k: v for k, v in asd.items() if not (k.startswith("llama.") and "norm" in k)}
    out = {
        "adapter branch off (gates 0)": run(sd=no_gate),
        "no adapter biases": run(c=replace(cfg, w_bias=False)),
        "base-file norms instead of adapter norms": run(sd=base_norms),
    }
    if cfg.w_lora:
        out["no LoRA (new_gate kept)"] = run(c=replace(cfg, w_lora=False))
        out["no new_gate"] = run(c=replace(cfg, w_new_gate=False))
    if cfg.w_scale:
        out["no scales"] = run(c=replace(cfg, w_scale=False))
        out["scale not applied to adapter K/V"] = run(scale_adapter_kv=False)
    if cfg.fusion == "early_prefix":
        no_vg = {k: (torch.zeros_like(v) if k.endswith(".visual_gate") else v) for k, v in asd.items()}
        out["visual prefix off (visual_gate 0)"] = run(sd=no_vg)
    return out


def run_goldens():
    import sentencepiece as spm

    os.makedirs(GOLD, exist_ok=True)
    sp = spm.SentencePieceProcessor(model_file=os.path.join(OUT, "llama", "tokenizer.model"))
    prompt_text = ref.format_prompt(INSTRUCTION)
    prompt_ids = [ref.BOS_ID] + sp.encode(prompt_text)
    n_forced = FORCED_POSITIONS - len(prompt_ids)
    assert n_forced > 0
    g = torch.Generator().manual_seed(SEED + 100)
    forced_ids = torch.randint(3, VOCAB, (n_forced,), generator=g).tolist()

    params, llama_sd = ref.load_llama(os.path.join(OUT, "llama"))
    vis = ref.load_clip(os.path.join(OUT, "clip.pth"))
    image_np = np.load(os.path.join(SHARED, "fixtures", "images", "expected_preprocessed_image.npy"))
    assert image_np.shape == (1, 3, 224, 224) and image_np.dtype == np.float32
    save_npy(os.path.join(GOLD, "image.npy"), image_np)
    image = torch.from_numpy(np.load(os.path.join(GOLD, "image.npy")))
    with torch.no_grad():
        clip_feats = ref.clip_encode_image(vis, image)
        clip_feats_zero = ref.clip_encode_image(vis, torch.zeros_like(image))

    results, stats = {}, {}
    for name in ADAPTERS:
        asd, acfg = ref.load_adapter(os.path.join(OUT, f"adapter_{name}.pth"))
        cfg = ref.AdapterConfig.build(params, acfg, VOCAB)
        with torch.no_grad():
            vq = ref.forward_visual(asd, cfg, clip_feats)
            vq0 = ref.forward_visual(asd, cfg, clip_feats_zero)
        dec = ref.Decoder(cfg, llama_sd, asd, vq)
        p_logits, p_hidden = dec.forward(torch.tensor([prompt_ids]), 0)
        p_logits, p_hidden = p_logits[0], p_hidden[0]
        gen, s_logits, s_hidden = ref.greedy_generate(dec, prompt_ids, MAX_NEW_TOKENS)
        f_logits, f_hidden = ref.forced_decode(dec, prompt_ids, forced_ids)
        # self-consistency: incremental decode == one-shot prefill; step 0 == prompt last row
        one_logits, _ = dec.forward(torch.tensor([prompt_ids + forced_ids]), 0)
        inc_err = float((one_logits[0] - f_logits).abs().max())
        assert inc_err < 1e-3, inc_err
        assert torch.equal(s_logits[0], p_logits[-1])
        # sensitivity: same prompt with the vq of an all-zero image
        dec0 = ref.Decoder(cfg, llama_sd, asd, vq0)
        z_logits, _ = dec0.forward(torch.tensor([prompt_ids]), 0)
        z_logits = z_logits[0]
        abl = ablations(name, cfg, llama_sd, asd, vq, prompt_ids, p_logits)
        results[name] = dict(cfg=cfg, acfg=acfg, vq=vq, p_logits=p_logits, p_hidden=p_hidden, gen=gen,
                             s_logits=s_logits, s_hidden=s_hidden, f_logits=f_logits, f_hidden=f_hidden)
        pm, fm, sm = top2_margin(p_logits), top2_margin(f_logits), top2_margin(s_logits)
        stats[name] = dict(
            prompt_margin=pm, forced_margin=fm, step_margin=sm, inc_err=inc_err,
            zero_img_maxdiff=float((z_logits - p_logits).abs().max()),
            zero_img_argmax_changes=int((z_logits.argmax(-1) != p_logits.argmax(-1)).sum()),
            logit_std=float(p_logits.std()),
            ablations=abl,
        )

    # Vocabulary columns kept for the per-position logit goldens: seeded random columns,
    # the special ids, and every top-K id of every stored row of every adapter.
    gcol = torch.Generator().manual_seed(SEED + 200)
    cols = set(torch.randperm(VOCAB, generator=gcol)[:N_RANDOM_COLS].tolist()) | {0, 1, 2, VOCAB - 1}
    for r in results.values():
        for key in ("p_logits", "s_logits"):
            cols |= set(torch.topk(r[key], TOPK_COLS, dim=-1).indices.flatten().tolist())
    cols = torch.tensor(sorted(cols), dtype=torch.int64)
    np.save(os.path.join(GOLD, "logit_cols.npy"), cols.numpy().astype("<i4"))

    for name, r in results.items():
        pre = os.path.join(GOLD, name)
        save_npy(pre + "_clip_feats.npy", clip_feats)
        save_npy(pre + "_visual_tokens.npy", r["vq"])
        save_npy(pre + "_prompt_hidden.npy", r["p_hidden"])
        save_npy(pre + "_prompt_logits_sub.npy", r["p_logits"][:, cols])
        save_npy(pre + "_prompt_logits_last.npy", r["p_logits"][-1])
        save_npy(pre + "_step_hidden.npy", r["s_hidden"])
        save_npy(pre + "_step_logits_sub.npy", r["s_logits"][:, cols])
        save_json(pre + "_greedy.json", dict(
            prompt_text=prompt_text,
            prompt_ids=prompt_ids,
            max_new_tokens=MAX_NEW_TOKENS,
            eos_id=ref.EOS_ID,
            generated_ids=r["gen"],
            generated_text=sp.decode([t for t in r["gen"] if t != ref.EOS_ID]),
            step_argmax_margin=[float(x) for x in top2_margin(r["s_logits"])],
            step_hidden_file=f"{name}_step_hidden.npy",
            step_logits_file=f"{name}_step_logits_sub.npy",
            step_logits_columns_file="logit_cols.npy",
            prompt_hidden_file=f"{name}_prompt_hidden.npy",
            prompt_logits_file=f"{name}_prompt_logits_sub.npy",
            prompt_last_logits_file=f"{name}_prompt_logits_last.npy",
        ))
        top = torch.topk(r["f_logits"], TOPK, dim=-1)
        save_npy(pre + "_forced_logits_top.npy", top.values)
        save_npy(pre + "_forced_hidden.npy", r["f_hidden"])
        save_json(pre + "_forced.json", dict(
            prompt_len=len(prompt_ids),
            token_ids=prompt_ids + forced_ids,
            feeding="prefill prompt at start_pos 0, then the remaining ids one per call",
            argmax=[int(x) for x in top.indices[:, 0]],
            margin=[float(x) for x in (top.values[:, 0] - top.values[:, 1])],
            topk_ids=top.indices.tolist(),
            topk_values_file=f"{name}_forced_logits_top.npy",
            hidden_file=f"{name}_forced_hidden.npy",
        ))
    return prompt_ids, forced_ids, results, stats, cols


# ============================================================================ README


def margin_line(m: torch.Tensor):
    m = m.flatten()
    return (f"min {float(m.min()):.3f}, median {float(m.median()):.3f}, "
            f"share >= 0.5: {float((m >= 0.5).float().mean()) * 100:.0f}% ({int((m >= 0.5).sum())}/{m.numel()})")


def write_readme(prompt_ids, forced_ids, results, stats, cols):
    p = LLAMA_PARAMS
    Fh = ref.AdapterConfig.ffn_hidden_of(p["dim"], p["multiple_of"])
    S = len(prompt_ids)
    lines = []
    A = lines.append
    A("# Tiny LLaMA-Adapter V2 fixtures (generated; do not edit by hand)")
    A("")
    A("Seeded random weights in the real file layouts, plus fp32 golden outputs of the")
    A("PyTorch reference `tools/reference/model.py` (spec: shared/spec/llama-adapter-v2.md).")
    A("")
    A("Regenerate from the repository root (CPU, ~1 min, deterministic for a given torch version):")
    A("")
    A("    pip install torch numpy sentencepiece")
    A("    python3 tools/reference/make_fixtures.py")
    A("")
    A(f"Generated with torch {torch.__version__}, numpy {np.__version__}, seed {SEED}.")
    A("")
    A("## Dimensions")
    A("")
    A(f"* LLaMA: dim {p['dim']}, n_layers {p['n_layers']}, n_heads {p['n_heads']} (head_dim "
      f"{p['dim'] // p['n_heads']}), multiple_of {p['multiple_of']} -> FFN hidden {Fh}, norm_eps "
      f"{p['norm_eps']}, vocab 32000 (from the tokenizer; params.json says -1), RoPE theta 10000 "
      "interleaved pairs.")
    A(f"* CLIP ViT: width {CLIP_WIDTH}, {CLIP_LAYERS} layers, heads = width/64 = {CLIP_WIDTH // 64}, "
      f"patch {CLIP_PATCH}, resolution {CLIP_RES} -> {(CLIP_RES // CLIP_PATCH) ** 2 + 1} tokens, "
      f"output dim (proj [{CLIP_WIDTH},{CLIP_OUT}]) {CLIP_OUT}.")
    A(f"* Visual adapter (all three): query_len 10, v_embed_dim 32, v_depth 2, v_num_heads 2 (head_dim 16), "
      "mlp 128; query_layer 3 (of 4 layers).")
    A("")
    A("## Files")
    A("")
    A("| file | contents |")
    A("|---|---|")
    A("| `llama/params.json` | Meta style: " + json.dumps(p) + " |")
    A("| `llama/consolidated.00.pth` | Meta key names (no `llama.` prefix), all fp16: `tok_embeddings.weight` "
      f"[32000,32], `layers.{{i}}.attention.w{{q,k,v,o}}.weight` [32,32], `layers.{{i}}.feed_forward.w1/w3.weight` "
      f"[{Fh},32], `w2.weight` [32,{Fh}], `layers.{{i}}.attention_norm.weight`/`ffn_norm.weight` [32], "
      "`norm.weight` [32], `output.weight` [32000,32], `rope.freqs` [4] (ignored). No biases (they come from the adapter). "
      "Its norm weights are overridden by every adapter checkpoint. |")
    A("| `llama/tokenizer.model` | copy of Meta's SentencePiece model (32000 pieces, BOS 1, EOS 2) |")
    A("| `clip.pth` | OpenAI-layout CLIP state dict. `visual.*` as spec 3.5 (conv1 [64,3,14,14], class_embedding [64], "
      "positional_embedding [257,64], ln_pre, 2 resblocks with in_proj [192,64], out_proj, c_fc [256,64], c_proj [64,256], "
      "ln_1/ln_2, ln_post, proj [64,32]); conv/linear weights+biases and proj are fp16, LayerNorm params, class and "
      "positional embeddings fp32. Entries a converter must skip: ints `input_resolution`, `context_length`, `vocab_size`; "
      "text tensors `positional_embedding` [8,32] (TEXT, same name without `visual.`), `token_embedding.weight`, "
      "`text_projection`, `ln_final.*`, `logit_scale` (0-dim). |")
    A("| `adapter_bias.pth` | `{'model','config'}` fp32, BIAS-7B key set (spec 3.3). config " + json.dumps(ADAPTERS['bias']) + " |")
    A("| `adapter_lora.pth` | BIAS key set + `llama.layers.{i}.attention.lora_w{q,k,v,o}_l{1,2}.weight`, "
      "`feed_forward.lora_w{1,2,3}_l{1,2}.weight` (rank 4) and `attention.new_gate` [1,1,1,1] per layer. config "
      + json.dumps(ADAPTERS['lora']) + " |")
    A("| `adapter_early.pth` | extension: BIAS key set + `llama.layers.0.attention.visual_gate` [1,4,1,1] + per-output-channel "
      "scales `llama.layers.{i}.attention.w{q,k,v,o}.scale` [32], `feed_forward.w1/w3.scale` "
      f"[{Fh}], `w2.scale` [32] for every layer. config " + json.dumps(ADAPTERS['early']) + " |")
    A("| `golden/image.npy` | [1,3,224,224] f32 input image = shared/fixtures/images/expected_preprocessed_image.npy (RGB) |")
    A("| `golden/logit_cols.npy` | [K] int32 vocabulary ids (sorted) kept by every `*_logits_sub.npy`: "
      f"{N_RANDOM_COLS} seeded random ids, 0,1,2,31999, and the top-{TOPK_COLS} ids of every prompt and greedy-step row "
      f"of all three adapters; K = {len(cols)} |")
    A("| `golden/<name>_clip_feats.npy` | [1,257,32] CLIP output (ln_post on all tokens, @proj); identical for the 3 names |")
    A("| `golden/<name>_visual_tokens.npy` | [1,10,32] vq (output of visual_proj_norm) |")
    A(f"| `golden/<name>_prompt_hidden.npy` | [{S},32] final RMSNorm output (input of `output`) at every prompt position |")
    A(f"| `golden/<name>_prompt_logits_sub.npy` | [{S},K] logits of every prompt position at the `logit_cols` ids |")
    A("| `golden/<name>_prompt_logits_last.npy` | [32000] full logits of the last prompt position (= step 0) |")
    A("| `golden/<name>_greedy.json` | prompt_text, prompt_ids (BOS first), generated_ids (greedy, max 24, stop at EOS 2, "
      "EOS kept if produced), generated_text, per-step top1-top2 margins, names of the step files |")
    A("| `golden/<name>_step_hidden.npy` | [N,32] final-norm hidden state each greedy token was chosen from (row 0 = last prompt position) |")
    A("| `golden/<name>_step_logits_sub.npy` | [N,K] the matching logits at the `logit_cols` ids |")
    A(f"| `golden/<name>_forced.json` | {FORCED_POSITIONS} positions: token_ids = prompt ids + {len(forced_ids)} seeded random "
      "ids, fed as a prompt prefill at start_pos 0 then one id per call; per position argmax id, top1-top2 margin, top-8 ids |")
    A(f"| `golden/<name>_forced_logits_top.npy` | [{FORCED_POSITIONS},8] top-8 logit values (descending) per position |")
    A(f"| `golden/<name>_forced_hidden.npy` | [{FORCED_POSITIONS},32] final-norm hidden state per position |")
    A("")
    A("Full logits of any row are `hidden @ output.weight^T` (output.weight read from the fp16 file and cast to fp32; "
      "no bias), so `*_hidden.npy` + the LLaMA file reproduce every full [*,32000] row; the full [S,32000] arrays are not "
      "stored because three of them would not fit the 8 MB budget of this folder.")
    A("")
    A("## Extension keys and config")
    A("")
    A("Official checkpoints carry `config = {w_bias, w_lora, lora_rank}` only; every other value is hard-coded by "
      "MM7B's `load()` (spec section 1). These fixtures add config keys; an engine should default each one to the "
      "7B value when absent:")
    A("")
    A("| config key | meaning | 7B default | tiny |")
    A("|---|---|---|---|")
    A("| `query_len` | adapter / visual-query tokens per layer | 10 | 10 |")
    A("| `query_layer` | number of last layers with static prompts | 31 | 3 |")
    A("| `v_embed_dim`, `v_depth`, `v_num_heads`, `v_mlp_ratio` | visual blocks (heads cannot be read from shapes) | 768, 8, 16, 4.0 | 32, 2, 2, 4.0 |")
    A("| `fusion` | `late_add` (released code) or `early_prefix` (paper, this project) | `late_add` | early only |")
    A("| `early_layers` | layers [0, early_layers) get vq as a gated prefix (early_prefix only) | 0 | 1 |")
    A("| `w_scale` | per-output-channel scales `*.scale` present (missing key => 1) | False | early only |")
    A("")
    A("New tensor keys (early only): `llama.layers.{i}.attention.visual_gate` [1,H,1,1] for i < early_layers; "
      "`llama.layers.{i}.attention.{wq,wk,wv,wo}.scale` and `llama.layers.{i}.feed_forward.{w1,w2,w3}.scale` [out_features]. "
      "`w_new_gate` is not a config key: it equals `w_lora`. The lora_rank in the bias/early configs (16) is unused.")
    A("")
    A("Cross-checks of the reference itself (nn.MultiheadAttention, nn.TransformerEncoderLayer as the timm block, "
      "complex-number RoPE, and re-running these goldens): `python3 tools/reference/selfcheck.py`.")
    A("")
    A("## Semantics the goldens encode")
    A("")
    A("* fp32 everywhere, weights read from the files (fp16 ones upcast exactly). No autocast.")
    A("* `late_add` (bias, lora): layer 0 has no adapter; layer l in 1..3 uses "
      "`adapter_query.weight.reshape(3,10,32)[l-1] + vq` gated by `tanh(attention.gate)` (per head); "
      "lora additionally multiplies the adapter probabilities by `attention.new_gate` and adds rank-4 LoRA "
      "terms `(x L1^T) L2^T` (scale 1) to wq,wk,wv,wo,w1,w2,w3 (not to the adapter K/V).")
    A("* `early_prefix` (early): layer 0 gets `vq` as a 10-token gated prefix with `tanh(attention.visual_gate)`; "
      "layers 1..3 get `adapter_query[l-1]` alone (no vq) gated by `tanh(attention.gate)`; "
      "`llama.layers.0.attention.gate` is present but unused.")
    A("* `w_scale`: `y = s * (x W^T + b [+ LoRA])`, s per output channel, missing => 1. The scale of wk/wv also "
      "applies to the adapter keys/values `K_a = s_k * (A Wk^T)`, `V_a = s_v * (A Wv^T)` (the scale is part of the "
      "linear layer; LoRA is not).")
    A("* Adapter branch: separate softmax over the 10 adapter keys (no mask, no RoPE, no bias), added to the "
      "causal main-branch output before wo.")
    A("")
    A("## Statistics (top-1 minus top-2 logit margin)")
    A("")
    for name, s in stats.items():
        A(f"* **{name}**: prompt positions {margin_line(s['prompt_margin'])}; forced 64 positions "
          f"{margin_line(s['forced_margin'])}; greedy steps {margin_line(s['step_margin'])}; "
          f"logit std {s['logit_std']:.2f}.")
        A(f"  Generated ids: {results[name]['gen']}.")
        A(f"  Sensitivity to the image: replacing it by zeros changes prompt logits by up to "
          f"{s['zero_img_maxdiff']:.3f} and flips {s['zero_img_argmax_changes']}/{S} prompt argmaxes. "
          f"Incremental decode vs one-shot prefill: max |diff| {s['inc_err']:.2e}.")
        A("  Dropping one feature (max |prompt logit diff|, argmax flips of " + str(S) + "): " + "; ".join(
            f"{k}: {d:.2f}, {n}" for k, (d, n) in s["ablations"].items()) + ".")
    A("")
    A("Suggested tolerances for an fp32 GPU engine: hidden/vq/clip_feats abs 1e-3 (relative to values of order 1), "
      "logits abs ~1e-2 (logit std is large); argmax must match where the margin is above ~0.05.")
    with open(os.path.join(OUT, "README.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


def main():
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    os.makedirs(OUT, exist_ok=True)
    make_llama()
    make_clip()
    for k, (name, cfg) in enumerate(ADAPTERS.items()):
        make_adapter(name, cfg, SEED + 10 + k)
    out = run_goldens()
    write_readme(*out)
    total = 0
    for root, _, files in os.walk(OUT):
        for fn in sorted(files):
            path = os.path.join(root, fn)
            total += os.path.getsize(path)
    print(f"wrote {OUT}: {total} bytes")
    for name, s in out[3].items():
        print(f"{name}: prompt margins {margin_line(s['prompt_margin'])}; forced {margin_line(s['forced_margin'])}; "
              f"gen {out[2][name]['gen']}")
    assert total < 8 * 1024 * 1024, "fixtures exceed 8 MiB"


if __name__ == "__main__":
    main()
