#!/usr/bin/env python3
"""Cross-checks of tools/reference/model.py against independent torch building blocks.

    python3 tools/reference/selfcheck.py

* CLIP attention vs torch.nn.MultiheadAttention (in_proj q|k|v, 2 heads).
* timm-0.3.2 Block vs torch.nn.TransformerEncoderLayer(norm_first, exact GELU): the same
  math and the same qkv row layout (q|k|v groups, heads contiguous).
* Interleaved RoPE vs the complex-number form of the official code (view_as_complex * polar).
* Decoder: incremental decode == one-shot prefill on the tiny fixtures, and the stored
  goldens reproduce (if tests/fixtures/tiny exists).
"""

import math
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True  # keep tools/reference free of __pycache__
sys.path.insert(0, HERE)
import model as ref  # noqa: E402


def check_clip_mha():
    torch.manual_seed(0)
    W, H, N = 128, 2, 7
    mha = torch.nn.MultiheadAttention(W, H, batch_first=True)
    with torch.no_grad():
        mha.in_proj_bias.normal_()
        mha.out_proj.bias.normal_()
    x = torch.randn(2, N, W)
    with torch.no_grad():
        want = mha(x, x, x, need_weights=False)[0]
        got = ref._mha_clip(x, mha.in_proj_weight, mha.in_proj_bias, mha.out_proj.weight, mha.out_proj.bias, H)
    err = float((want - got).abs().max())
    assert err < 1e-5, err
    print(f"clip MHA vs nn.MultiheadAttention: max err {err:.2e}")


def check_timm_block():
    torch.manual_seed(1)
    C, H, N = 32, 2, 13
    layer = torch.nn.TransformerEncoderLayer(C, H, dim_feedforward=4 * C, dropout=0.0, activation="gelu",
                                             layer_norm_eps=1e-5, batch_first=True, norm_first=True).eval()
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.1 * torch.randn_like(p))
    sd = {
        "b.norm1.weight": layer.norm1.weight, "b.norm1.bias": layer.norm1.bias,
        "b.attn.qkv.weight": layer.self_attn.in_proj_weight, "b.attn.qkv.bias": layer.self_attn.in_proj_bias,
        "b.attn.proj.weight": layer.self_attn.out_proj.weight, "b.attn.proj.bias": layer.self_attn.out_proj.bias,
        "b.norm2.weight": layer.norm2.weight, "b.norm2.bias": layer.norm2.bias,
        "b.mlp.fc1.weight": layer.linear1.weight, "b.mlp.fc1.bias": layer.linear1.bias,
        "b.mlp.fc2.weight": layer.linear2.weight, "b.mlp.fc2.bias": layer.linear2.bias,
    }
    x = torch.randn(2, N, C)
    with torch.no_grad():
        want = layer(x)
        got = ref._timm_block(x, sd, "b.", H)
    err = float((want - got).abs().max())
    assert err < 1e-5, err
    print(f"timm Block vs nn.TransformerEncoderLayer: max err {err:.2e}")


def check_rope():
    torch.manual_seed(2)
    B, S, H, d, P = 1, 5, 3, 8, 11
    x = torch.randn(B, S, H, d)
    # official form: freqs_cis = polar(1, outer(t, freqs)); x as complex pairs (2i, 2i+1)
    freqs = 1.0 / (10000.0 ** (torch.arange(0, d, 2)[: d // 2].float() / d))
    t = torch.arange(2 * 512)
    fc = torch.polar(torch.ones(2 * 512, d // 2), torch.outer(t, freqs).float())[P:P + S]
    xc = torch.view_as_complex(x.reshape(B, S, H, d // 2, 2))
    want = torch.view_as_real(xc * fc.view(1, S, 1, d // 2)).flatten(3)
    cos, sin = ref.rope_cos_sin(d, torch.arange(P, P + S))
    got = ref.apply_rope(x, cos, sin)
    err = float((want - got).abs().max())
    assert err < 1e-5, err
    print(f"RoPE vs complex form: max err {err:.2e}")


def check_fixtures():
    out = os.path.join(HERE, "..", "..", "tests", "fixtures", "tiny")
    if not os.path.isdir(out):
        print("fixtures not found; skipped")
        return
    import json
    gold = os.path.join(out, "golden")
    params, llama_sd = ref.load_llama(os.path.join(out, "llama"))
    vis = ref.load_clip(os.path.join(out, "clip.pth"))
    image = torch.from_numpy(np.load(os.path.join(gold, "image.npy")))
    feats = ref.clip_encode_image(vis, image)
    cols = torch.from_numpy(np.load(os.path.join(gold, "logit_cols.npy")).astype(np.int64))
    for name in ("bias", "lora", "early"):
        asd, acfg = ref.load_adapter(os.path.join(out, f"adapter_{name}.pth"))
        cfg = ref.AdapterConfig.build(params, acfg)
        vq = ref.forward_visual(asd, cfg, feats)
        assert np.array_equal(vq.numpy(), np.load(os.path.join(gold, f"{name}_visual_tokens.npy")))
        dec = ref.Decoder(cfg, llama_sd, asd, vq)
        g = json.load(open(os.path.join(gold, f"{name}_greedy.json")))
        gen, sl, sh = ref.greedy_generate(dec, g["prompt_ids"], g["max_new_tokens"])
        assert gen == g["generated_ids"], name
        assert np.array_equal(sl[:, cols].numpy(), np.load(os.path.join(gold, f"{name}_step_logits_sub.npy")))
        # full logits from hidden @ output^T
        full = torch.from_numpy(np.load(os.path.join(gold, f"{name}_prompt_hidden.npy"))) @ llama_sd["output.weight"].T
        last = np.load(os.path.join(gold, f"{name}_prompt_logits_last.npy"))
        err = float(np.abs(full[-1].numpy() - last).max())
        assert err < 1e-4, err
        f = json.load(open(os.path.join(gold, f"{name}_forced.json")))
        one, _ = dec.forward(torch.tensor([f["token_ids"]]), 0)
        assert [int(i) for i in one[0].argmax(-1)] == f["argmax"], name
        print(f"{name}: goldens reproduce (greedy, vq, step logits, forced argmax); hidden@output^T err {err:.1e}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    check_clip_mha()
    check_timm_block()
    check_rope()
    check_fixtures()
    print("selfcheck OK")
