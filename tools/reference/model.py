"""Plain fp32 PyTorch reference of the LLaMA-Adapter V2 inference forward.

This is the executable form of /work/shared/spec/llama-adapter-v2.md (sections 2-5),
written from the spec, plus this project's extensions:

* ``fusion = "early_prefix"`` (the paper's early fusion, as a gated prefix),
* ``visual_gate`` (per-head tanh gate of the early visual prefix),
* ``w_scale`` (paper Eq. 1 per-output-channel scale ``y = s * (W x + b)``).

Everything is computed in float32 on the CPU; no autocast, no fp16 arithmetic.
Weights stored in fp16 (Meta LLaMA, OpenAI CLIP) are cast to fp32 once on load.

Public entry points:

* ``load_llama(dir)``, ``load_clip(path)``, ``load_adapter(path)``: read checkpoints.
* ``AdapterConfig.from_checkpoint(cfg, llama_params, adapter_sd)``: resolved config.
* ``clip_encode_image(visual, image)`` -> clip_feats ``[B, 257, clip_dim]``.
* ``forward_visual(adapter_sd, cfg, clip_feats)`` -> vq ``[B, query_len, dim]``.
* ``Decoder``: LLaMA decoder with KV cache; ``forward(tokens, start_pos)`` returns
  logits for every fed position plus the final-norm hidden states.
* ``greedy_generate(decoder, prompt_ids, max_new_tokens)``.

Only the tensors needed for inference are used; unknown keys are ignored here (the
Rust converter is the place that must reject or skip them).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

LN_EPS = 1e-5  # torch default; CLIP LayerNorm, timm blocks, clip_proj_norm, visual_proj_norm
ROPE_THETA = 10000.0
MAX_SEQ_LEN = 512
BOS_ID = 1
EOS_ID = 2

# Defaults that MM7B's llama.load() hard-codes (spec section 1). A checkpoint config may
# override them (the tiny fixtures do, because their shapes are not the 7B ones).
MM7B_DEFAULTS = dict(
    query_len=10,
    query_layer=31,
    v_embed_dim=768,
    v_depth=8,
    v_num_heads=16,
    v_mlp_ratio=4.0,
    lora_rank=16,
    w_bias=True,
    w_lora=False,
    fusion="late_add",
    early_layers=0,
    w_scale=False,
)


# ----------------------------------------------------------------------------- loading


def _to_f32(sd: dict) -> dict:
    return {k: (v.detach().to(torch.float32).clone() if torch.is_tensor(v) else v) for k, v in sd.items()}


def load_llama(llama_dir: str):
    """Meta-layout LLaMA: params.json + consolidated.00.pth (keys without 'llama.')."""
    with open(os.path.join(llama_dir, "params.json")) as f:
        params = json.load(f)
    sd = torch.load(os.path.join(llama_dir, "consolidated.00.pth"), map_location="cpu", weights_only=True)
    return params, _to_f32(sd)


def load_clip(path: str) -> dict:
    """OpenAI CLIP state dict; returns the visual tower with the 'visual.' prefix removed, plus our
    `vision_heads` int when the file has it (OpenAI's layout implies width / 64 heads)."""
    sd = torch.load(path, map_location="cpu", weights_only=True)
    vis = {k[len("visual."):]: v for k, v in _to_f32(sd).items() if k.startswith("visual.") and torch.is_tensor(v)}
    if "vision_heads" in sd:
        vis["vision_heads"] = int(sd["vision_heads"])
    return vis


def load_adapter(path: str):
    ck = torch.load(path, map_location="cpu", weights_only=True)
    return _to_f32(ck["model"]), dict(ck.get("config", {}))


# ----------------------------------------------------------------------------- config


@dataclass
class AdapterConfig:
    dim: int
    n_layers: int
    n_heads: int
    ffn_hidden: int
    norm_eps: float
    vocab_size: int
    query_len: int
    query_layer: int
    v_embed_dim: int
    v_depth: int
    v_num_heads: int
    v_mlp_ratio: float
    w_bias: bool
    w_lora: bool
    lora_rank: int
    w_new_gate: bool
    fusion: str
    early_layers: int
    w_scale: bool
    extra: dict = field(default_factory=dict)

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @staticmethod
    def ffn_hidden_of(dim: int, multiple_of: int) -> int:
        hidden = int(2 * (4 * dim) / 3)
        return multiple_of * ((hidden + multiple_of - 1) // multiple_of)

    @classmethod
    def build(cls, llama_params: dict, ck_config: dict, vocab_size: int = 32000) -> "AdapterConfig":
        c = dict(MM7B_DEFAULTS)
        c.update(ck_config)
        dim = llama_params["dim"]
        w_lora = bool(c["w_lora"])
        return cls(
            dim=dim,
            n_layers=llama_params["n_layers"],
            n_heads=llama_params["n_heads"],
            ffn_hidden=cls.ffn_hidden_of(dim, llama_params["multiple_of"]),
            norm_eps=float(llama_params["norm_eps"]),
            vocab_size=vocab_size,  # from the tokenizer, not params.json (spec section 1)
            query_len=int(c["query_len"]),
            query_layer=int(c["query_layer"]),
            v_embed_dim=int(c["v_embed_dim"]),
            v_depth=int(c["v_depth"]),
            v_num_heads=int(c["v_num_heads"]),
            v_mlp_ratio=float(c["v_mlp_ratio"]),
            w_bias=True,  # load() forces phase "finetune", which forces w_bias (spec section 1)
            w_lora=w_lora,
            lora_rank=int(c["lora_rank"]),
            w_new_gate=w_lora,  # "for compatibility" (spec section 1)
            fusion=str(c["fusion"]),
            early_layers=int(c["early_layers"]),
            w_scale=bool(c["w_scale"]),
        )

    def validate(self):
        assert self.fusion in ("late_add", "early_prefix"), self.fusion
        assert self.dim % self.n_heads == 0 and self.head_dim % 2 == 0
        assert 0 <= self.query_layer <= self.n_layers
        if self.fusion == "early_prefix":
            assert self.early_layers >= 1
            assert self.early_layers + self.query_layer <= self.n_layers, "early_layers + query_layer > n_layers"


# ----------------------------------------------------------------------------- CLIP ViT


def _mha_clip(x, w_in, b_in, w_out, b_out, n_heads):
    """nn.MultiheadAttention (batch-first view): in_proj rows are q|k|v; no mask."""
    B, N, W = x.shape
    hd = W // n_heads
    qkv = F.linear(x, w_in, b_in)  # [B,N,3W]
    q, k, v = qkv.split(W, dim=-1)
    q = q.view(B, N, n_heads, hd).transpose(1, 2)
    k = k.view(B, N, n_heads, hd).transpose(1, 2)
    v = v.view(B, N, n_heads, hd).transpose(1, 2)
    att = torch.softmax((q @ k.transpose(-1, -2)) / math.sqrt(hd), dim=-1)
    o = (att @ v).transpose(1, 2).reshape(B, N, W)
    return F.linear(o, w_out, b_out)


def quick_gelu(x):
    return x * torch.sigmoid(1.702 * x)


def clip_encode_image(vis: dict, image: torch.Tensor) -> torch.Tensor:
    """Spec 2.1: CLIP VisionTransformer, ln_post on ALL tokens, then x @ proj."""
    conv_w = vis["conv1.weight"]  # [W,3,p,p], no bias
    width, _, patch, _ = conv_w.shape
    n_heads = vis.get("vision_heads", width // 64)
    n_layers = len({k.split(".")[2] for k in vis if k.startswith("transformer.resblocks.")})
    x = F.conv2d(image, conv_w, bias=None, stride=patch)  # [B,W,g,g]
    B = x.shape[0]
    x = x.reshape(B, width, -1).transpose(1, 2)  # [B, g*g, W], row-major patches
    cls = vis["class_embedding"].view(1, 1, width).expand(B, 1, width)
    x = torch.cat([cls, x], dim=1)
    x = x + vis["positional_embedding"]
    x = F.layer_norm(x, (width,), vis["ln_pre.weight"], vis["ln_pre.bias"], LN_EPS)
    for i in range(n_layers):
        p = f"transformer.resblocks.{i}."
        h = F.layer_norm(x, (width,), vis[p + "ln_1.weight"], vis[p + "ln_1.bias"], LN_EPS)
        x = x + _mha_clip(h, vis[p + "attn.in_proj_weight"], vis[p + "attn.in_proj_bias"],
                          vis[p + "attn.out_proj.weight"], vis[p + "attn.out_proj.bias"], n_heads)
        h = F.layer_norm(x, (width,), vis[p + "ln_2.weight"], vis[p + "ln_2.bias"], LN_EPS)
        h = F.linear(quick_gelu(F.linear(h, vis[p + "mlp.c_fc.weight"], vis[p + "mlp.c_fc.bias"])),
                     vis[p + "mlp.c_proj.weight"], vis[p + "mlp.c_proj.bias"])
        x = x + h
    x = F.layer_norm(x, (width,), vis["ln_post.weight"], vis["ln_post.bias"], LN_EPS)
    return x @ vis["proj"]  # proj is [W, out]: NOT transposed


# ----------------------------------------------------------------------------- visual adapter


def _timm_block(x, sd, p, n_heads):
    """timm 0.3.2 Block: pre-LN, qkv (bias) grouped q|k|v with heads contiguous, erf GELU MLP."""
    B, N, C = x.shape
    hd = C // n_heads
    h = F.layer_norm(x, (C,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], LN_EPS)
    qkv = F.linear(h, sd[p + "attn.qkv.weight"], sd[p + "attn.qkv.bias"])
    qkv = qkv.reshape(B, N, 3, n_heads, hd).permute(2, 0, 3, 1, 4)  # [3,B,H,N,hd]
    q, k, v = qkv[0], qkv[1], qkv[2]
    att = torch.softmax((q @ k.transpose(-2, -1)) * hd ** -0.5, dim=-1)
    o = (att @ v).transpose(1, 2).reshape(B, N, C)
    x = x + F.linear(o, sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"])
    h = F.layer_norm(x, (C,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], LN_EPS)
    h = F.gelu(F.linear(h, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"]))  # exact erf GELU
    return x + F.linear(h, sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"])


def forward_visual(sd: dict, cfg: AdapterConfig, clip_feats: torch.Tensor) -> torch.Tensor:
    """Spec 2.2: clip_feats [B,257,clip_dim] -> vq [B, query_len, dim]."""
    B = clip_feats.shape[0]
    c = F.linear(clip_feats, sd["clip_proj.weight"], sd["clip_proj.bias"])
    c = F.layer_norm(c, (c.shape[-1],), sd["clip_proj_norm.weight"], sd["clip_proj_norm.bias"], LN_EPS)
    q0 = sd["visual_query.weight"].unsqueeze(0).expand(B, -1, -1)
    z = torch.cat([q0, c], dim=1)  # queries first
    for i in range(cfg.v_depth):
        z = _timm_block(z, sd, f"visual_blocks.{i}.", cfg.v_num_heads)
    z = z[:, : cfg.query_len, :]
    z = F.linear(z, sd["visual_proj.weight"], sd["visual_proj.bias"])
    return F.layer_norm(z, (z.shape[-1],), sd["visual_proj_norm.weight"], sd["visual_proj_norm.bias"], LN_EPS)


# ----------------------------------------------------------------------------- LLaMA decoder


def rms_norm(x, weight, eps):
    return (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)) * weight


def rope_cos_sin(head_dim: int, positions: torch.Tensor):
    """Angles t * 10000^(-2i/d), i = 0..d/2-1, in fp32. Returns cos, sin [S, d/2]."""
    freqs = 1.0 / (ROPE_THETA ** (torch.arange(0, head_dim, 2)[: head_dim // 2].float() / head_dim))
    ang = torch.outer(positions.to(torch.float32), freqs)
    return torch.cos(ang), torch.sin(ang)


def apply_rope(x, cos, sin):
    """x [B,S,H,d]; interleaved pairs (2i, 2i+1) rotated as complex numbers."""
    B, S, H, d = x.shape
    xr = x.reshape(B, S, H, d // 2, 2)
    a, b = xr[..., 0], xr[..., 1]
    c = cos.view(1, S, 1, d // 2)
    s = sin.view(1, S, 1, d // 2)
    return torch.stack([a * c - b * s, a * s + b * c], dim=-1).reshape(B, S, H, d)


class Decoder:
    """LLaMA decoder with biases, optional LoRA / scale, gated adapter prefixes, KV cache.

    ``weights``: LLaMA base tensors under Meta names, overridden by the adapter checkpoint's
    ``llama.*`` tensors (prefix stripped), exactly as load_state_dict(strict=False) would.
    """

    def __init__(self, cfg: AdapterConfig, llama_sd: dict, adapter_sd: dict, vq: torch.Tensor | None,
                 scale_adapter_kv: bool = True):
        cfg.validate()
        self.cfg = cfg
        # With w_scale: whether the wk/wv output scale also multiplies the adapter K_a / V_a.
        # True is this project's choice (the scale belongs to the linear layer, like its weight).
        self.scale_adapter_kv = scale_adapter_kv
        w = dict(llama_sd)
        for k, v in adapter_sd.items():
            if k.startswith("llama."):
                w[k[len("llama."):]] = v
        self.w = w
        self.adapters = self._layer_adapters(adapter_sd, vq)
        self.reset()

    # --- adapter placement -------------------------------------------------------------
    def _layer_adapters(self, adapter_sd, vq):
        """Per layer: None or (A [B,len,dim], gate_key). Spec 2.3 + early_prefix extension."""
        cfg = self.cfg
        L, ql, qlen = cfg.n_layers, cfg.query_layer, cfg.query_len
        out = [None] * L
        prompts = None
        if ql > 0:
            prompts = adapter_sd["adapter_query.weight"].reshape(ql, qlen, cfg.dim)
        first_late = L - ql
        for l in range(first_late, L):
            a = prompts[l - first_late].unsqueeze(0)  # [1,qlen,dim]
            if cfg.fusion == "late_add":
                assert vq is not None
                a = a + vq  # element-wise add, token by token
            out[l] = (a, "attention.gate")
        if cfg.fusion == "early_prefix":
            assert vq is not None
            for l in range(cfg.early_layers):
                out[l] = (vq, "attention.visual_gate")
        return out

    def reset(self):
        self.cache_k = [None] * self.cfg.n_layers
        self.cache_v = [None] * self.cfg.n_layers

    # --- linear with bias / LoRA / scale -------------------------------------------------
    def _linear(self, x, prefix, lora_prefix, name, use_bias, use_lora=True, use_scale=True):
        """y = s * (x W^T + b + (x L1^T) L2^T); s = per-output-channel scale (1 if absent)."""
        w = self.w
        y = F.linear(x, w[f"{prefix}.{name}.weight"])
        if use_bias and self.cfg.w_bias and f"{prefix}.{name}.bias" in w:
            y = y + w[f"{prefix}.{name}.bias"]
        if use_lora and self.cfg.w_lora:
            l1 = w[f"{lora_prefix}.lora_{name}_l1.weight"]
            l2 = w[f"{lora_prefix}.lora_{name}_l2.weight"]
            y = y + F.linear(F.linear(x, l1), l2)
        if use_scale and self.cfg.w_scale:
            s = w.get(f"{prefix}.{name}.scale")
            if s is not None:
                y = y * s
        return y

    # --- attention -----------------------------------------------------------------------
    def _attention(self, l, x, start_pos, cos, sin, mask):
        cfg = self.cfg
        B, S, D = x.shape
        H, hd = cfg.n_heads, cfg.head_dim
        pa = f"layers.{l}.attention"
        q = self._linear(x, pa, pa, "wq", True)
        k = self._linear(x, pa, pa, "wk", False)  # wk, wv: no bias
        v = self._linear(x, pa, pa, "wv", False)
        q = apply_rope(q.view(B, S, H, hd), cos, sin)
        k = apply_rope(k.view(B, S, H, hd), cos, sin)
        v = v.view(B, S, H, hd)
        if start_pos == 0:
            self.cache_k[l], self.cache_v[l] = k, v
        else:
            assert self.cache_k[l].shape[1] == start_pos
            self.cache_k[l] = torch.cat([self.cache_k[l], k], dim=1)
            self.cache_v[l] = torch.cat([self.cache_v[l], v], dim=1)
        assert self.cache_k[l].shape[1] <= MAX_SEQ_LEN
        keys = self.cache_k[l].transpose(1, 2)  # [B,H,P+S,hd]
        vals = self.cache_v[l].transpose(1, 2)
        qh = q.transpose(1, 2)  # [B,H,S,hd]
        scores = (qh @ keys.transpose(-1, -2)) / math.sqrt(hd) + mask
        out = torch.softmax(scores, dim=-1) @ vals

        ad = self.adapters[l]
        if ad is not None:
            a, gate_key = ad
            La = a.shape[1]
            # Base wk / wv only: no LoRA, no bias (wk/wv have none), no RoPE.
            # With w_scale the per-channel scale IS applied (it is part of the linear layer).
            sk = self.scale_adapter_kv
            ka = self._linear(a, pa, pa, "wk", False, use_lora=False, use_scale=sk).view(a.shape[0], La, H, hd).transpose(1, 2)
            va = self._linear(a, pa, pa, "wv", False, use_lora=False, use_scale=sk).view(a.shape[0], La, H, hd).transpose(1, 2)
            gate = torch.tanh(self.w[f"{pa}.{gate_key.split('.')[-1]}"])  # [1,H,1,1]
            if La > 1:
                probs = torch.softmax((qh @ ka.transpose(-1, -2)) / math.sqrt(hd), dim=-1)
                probs = gate * probs
                if cfg.w_new_gate:
                    probs = probs * self.w[f"{pa}.new_gate"]
                out = out + probs @ va
            else:  # softmax over a single key is 1
                g = gate * self.w[f"{pa}.new_gate"] if cfg.w_new_gate else gate
                out = out + g * va
        out = out.transpose(1, 2).reshape(B, S, D)
        return self._linear(out, pa, pa, "wo", True)

    def _ffn(self, l, x):
        pf = f"layers.{l}.feed_forward"
        h = F.silu(self._linear(x, pf, pf, "w1", True)) * self._linear(x, pf, pf, "w3", True)
        return self._linear(h, pf, pf, "w2", True)

    # --- full forward --------------------------------------------------------------------
    @torch.no_grad()
    def forward(self, tokens: torch.Tensor, start_pos: int):
        """tokens [B,S] int64 at absolute positions start_pos..start_pos+S-1.

        Returns (logits [B,S,vocab], hidden [B,S,dim]) where hidden is the final RMSNorm
        output (the exact input of the output head) for EVERY fed position.
        """
        cfg, w = self.cfg, self.w
        B, S = tokens.shape
        if start_pos == 0:
            self.reset()
        h = w["tok_embeddings.weight"][tokens]
        pos = torch.arange(start_pos, start_pos + S)
        cos, sin = rope_cos_sin(cfg.head_dim, pos)
        mask = torch.zeros(S, start_pos + S)
        if S > 1:
            mask = torch.triu(torch.full((S, start_pos + S), float("-inf")), diagonal=start_pos + 1)
        for l in range(cfg.n_layers):
            x = rms_norm(h, w[f"layers.{l}.attention_norm.weight"], cfg.norm_eps)
            h = h + self._attention(l, x, start_pos, cos, sin, mask)
            x = rms_norm(h, w[f"layers.{l}.ffn_norm.weight"], cfg.norm_eps)
            h = h + self._ffn(l, x)
        hidden = rms_norm(h, w["norm.weight"], cfg.norm_eps)
        logits = F.linear(hidden, w["output.weight"])  # no bias
        return logits, hidden


@torch.no_grad()
def greedy_generate(dec: Decoder, prompt_ids: list[int], max_new_tokens: int, eos_id: int = EOS_ID):
    """Prefill the prompt at start_pos 0, then one token at a time; stop at EOS (kept in output).

    Returns (generated_ids, step_logits [N,vocab], step_hidden [N,dim]); row j is what
    generated_ids[j] was chosen from (row 0 = last prompt position).
    """
    logits, hidden = dec.forward(torch.tensor([prompt_ids]), 0)
    cur_l, cur_h = logits[0, -1], hidden[0, -1]
    gen, rows_l, rows_h = [], [], []
    pos = len(prompt_ids)
    while True:
        nxt = int(torch.argmax(cur_l))
        gen.append(nxt)
        rows_l.append(cur_l)
        rows_h.append(cur_h)
        if nxt == eos_id or len(gen) >= max_new_tokens:
            break
        logits, hidden = dec.forward(torch.tensor([[nxt]]), pos)
        pos += 1
        cur_l, cur_h = logits[0, -1], hidden[0, -1]
    return gen, torch.stack(rows_l), torch.stack(rows_h)


@torch.no_grad()
def forced_decode(dec: Decoder, prompt_ids: list[int], forced_ids: list[int]):
    """Prefill the prompt, then feed forced_ids one at a time. Returns logits/hidden for all
    len(prompt)+len(forced) positions ([T,vocab], [T,dim])."""
    logits, hidden = dec.forward(torch.tensor([prompt_ids]), 0)
    Ls, Hs = [logits[0]], [hidden[0]]
    pos = len(prompt_ids)
    for t in forced_ids:
        lg, hd = dec.forward(torch.tensor([[t]]), pos)
        pos += 1
        Ls.append(lg[0])
        Hs.append(hd[0])
    return torch.cat(Ls), torch.cat(Hs)


ALPACA_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:"
)


def format_prompt(instruction: str) -> str:
    return ALPACA_NO_INPUT.format(instruction=instruction)
