#!/usr/bin/env python3
"""Train the default LLaMA-Adapter V2 demo model (shape world) from scratch on the CPU.

    python3 tools/train/train.py --out tools/train/runs/default

Stages (each saves a checkpoint under --out and is skipped when its checkpoint exists):
  1. lm    : small LLaMA-architecture LM pre-trained on a generated text corpus (then frozen)
  2. pool  : render the image pool (PIL renderer) used by stages 3-4
  3. clip  : small CLIP-layout ViT + tiny text tower, contrastive on image/caption pairs (frozen)
  4. adapt : LLaMA-Adapter V2 joint training with disjoint parameter groups
             image-text data  -> visual branch (clip_proj .. visual_proj_norm) + early visual_gate
             instruction data -> late adapter_query, gates, biases, scales, RMSNorm weights
  5. export: official layouts to www/models/default/src/ (llama/, clip.pth, adapter.pth)

Budgets per stage are wall-clock minutes (cosine schedules are fitted to the budget after
timing the first steps). One thread (torch.set_num_threads(1)) unless TRAIN_THREADS says otherwise.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

torch.set_num_threads(int(os.environ.get("TRAIN_THREADS", "1")))  # 1 by default: the machine is shared
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(REPO, "tools", "reference"))
sys.dont_write_bytecode = True
import data as D  # noqa: E402
import model as ref  # noqa: E402  (rope / rms_norm reused from the fp32 reference)

TOKENIZER = os.path.join(REPO, "tests", "fixtures", "llama-tokenizer.model")
VOCAB = 32000
MEM_SLOTS = 10  # prefix-memory slots in LM pre-training = the adapter's visual tokens (query_len)
BOS, EOS = 1, 2

# ---- sizes ---------------------------------------------------------------------------------
LLAMA = dict(dim=96, multiple_of=32, n_heads=4, n_layers=6, norm_eps=1e-05, vocab_size=-1)
# Vision heads: 8 of 16 dims instead of CLIP's width/64 = 2. In supervised probes (shape presence,
# 64 px, ~900 steps) 8 heads alone gave no clear gain (66.4 %; 2 heads 66.6 % at 1,000 steps) but
# 71.4 % with a supervised per-patch type target, which the dense phrase term below stands in for.
# Exported as `vision_heads` in clip.pth for the converter.
# Input 128 px with patch 16 (the same 8 x 8 grid as the 64 px / patch 8 of models one to six): the
# seventh model's CLIP was widened from 64 px (widen_patches) and held-out type errors on the
# smallest shapes fell from 12.9 to 5.3 % (tools/train/README.md, Findings 12).
CLIP = dict(width=128, layers=3, heads=8, patch=16, res=128, out=128, text_width=128, text_layers=2)
# v_depth 4: in stage 3a, held-out scenes written exactly 81.8 % with 4 visual blocks against ~77 %
# with 2 (tools/train/README.md, Findings 10).
ADAPTER = dict(w_bias=True, w_lora=False, lora_rank=16, fusion="early_prefix", early_layers=3, w_scale=True,
               query_len=10, query_layer=3, v_embed_dim=128, v_depth=4, v_num_heads=4, v_mlp_ratio=4.0,
               channel_order="rgb")


def log(msg):
    print(time.strftime("%H:%M:%S"), msg, flush=True)


# ---- tokenizer / compact vocabulary ----------------------------------------------------------


class Tok:
    """LLaMA SentencePiece; training uses a compact id space (the ids the generators emit)."""

    def __init__(self, ids=None):
        import sentencepiece as spm
        self.sp = spm.SentencePieceProcessor(model_file=TOKENIZER)
        assert self.sp.get_piece_size() == VOCAB
        if ids is None:
            rng = random.Random(99)
            s = {BOS, EOS}
            for _ in range(40000):
                p, r, _ = D.lm_example(rng)
                s.update(self.enc(p or "") + self.enc(r))
                sc = D.sample_scene(rng)
                for _, q, a in D.questions(sc, rng, all_kinds=rng.random() < 0.5):
                    s.update(self.enc(D.format_prompt(q)) + self.enc(a))
                _, q, a = D.text_task(rng)
                s.update(self.enc(D.format_prompt(q)) + self.enc(a))
            for w in D.COLOURS + D.SHAPES + D.ORDINALS:  # prefix-memory words
                s.update(self.enc(w))
            ids = sorted(s)
        self.ids = list(ids)
        self.g2c = {g: i for i, g in enumerate(self.ids)}

    def enc(self, s):
        return self.sp.encode(s) if s else []

    def c(self, gids):
        return [self.g2c[g] for g in gids]


def example_ids(tok, prompt, answer):
    """(compact ids, loss mask): BOS + prompt, answer + EOS; loss on the answer (+EOS) only.
    prompt None: plain document, loss on every token after BOS."""
    if prompt is None:
        g = [BOS] + tok.enc(answer) + [EOS]
        return tok.c(g), [0] + [1] * (len(g) - 1)
    p = [BOS] + tok.enc(prompt)
    a = tok.enc(answer.strip()) + [EOS]
    return tok.c(p + a), [0] * len(p) + [1] * len(a)


def collate(exs):
    T = max(len(x) for x, _ in exs)
    ids = torch.zeros(len(exs), T, dtype=torch.long)
    m = torch.zeros(len(exs), T)
    for i, (x, mk) in enumerate(exs):
        ids[i, :len(x)] = torch.tensor(x)
        m[i, :len(x)] = torch.tensor(mk, dtype=torch.float32)
    # predict token t from position t-1
    return ids, m


# ---- LLaMA decoder (training form; matches tools/reference/model.py Decoder exactly) --------


def meta_group(n):
    """The Meta checkpoint's module of linear `n` (wq..wo: attention, w1..w3: feed_forward)."""
    return "attention" if n in ("wq", "wk", "wv", "wo") else "feed_forward"


def ffn_hidden(dim, multiple_of):
    return ref.AdapterConfig.ffn_hidden_of(dim, multiple_of)


class LLaMA(nn.Module):
    LIN = ["wq", "wk", "wv", "wo", "w1", "w2", "w3"]
    BIAS = ["wq", "wo", "w1", "w2", "w3"]

    def __init__(self, V, p, a=None):
        super().__init__()
        d, L, H = p["dim"], p["n_layers"], p["n_heads"]
        hid = ffn_hidden(d, p["multiple_of"])
        self.d, self.L, self.H, self.hd, self.eps = d, L, H, d // H, p["norm_eps"]
        self.tok = nn.Parameter(torch.randn(V, d) * 0.02)
        self.out = nn.Parameter(torch.randn(V, d) * 0.02)
        self.unused = nn.Parameter(torch.zeros(d))  # shared row of every id outside the compact vocab
        self.n_unused = VOCAB - V
        shp = dict(wq=(d, d), wk=(d, d), wv=(d, d), wo=(d, d), w1=(hid, d), w2=(d, hid), w3=(hid, d))
        self.W = nn.ParameterDict()
        for l in range(L):
            for n, s in shp.items():
                std = 0.02 / math.sqrt(2 * L) if n in ("wo", "w2") else 0.02
                self.W[f"{l}_{n}"] = nn.Parameter(torch.randn(*s) * std)
            self.W[f"{l}_an"] = nn.Parameter(torch.ones(d))
            self.W[f"{l}_fn"] = nn.Parameter(torch.ones(d))
        self.norm = nn.Parameter(torch.ones(d))
        self.a = a
        if a is not None:
            self.B = nn.ParameterDict({f"{l}_{n}": nn.Parameter(torch.zeros(shp[n][0])) for l in range(L) for n in self.BIAS})
            self.S = nn.ParameterDict({f"{l}_{n}": nn.Parameter(torch.ones(shp[n][0])) for l in range(L) for n in self.LIN})
            self.gate = nn.ParameterDict({str(l): nn.Parameter(torch.zeros(1, H, 1, 1)) for l in range(L)})
            self.vgate = nn.ParameterDict({str(l): nn.Parameter(torch.zeros(1, H, 1, 1)) for l in range(a["early_layers"])})
            self.prompts = nn.Parameter(torch.randn(a["query_layer"] * a["query_len"], d))

    def lin(self, x, l, n, scale=True, bias=True):
        y = F.linear(x, self.W[f"{l}_{n}"])
        if self.a is not None:
            if bias and n in self.BIAS:
                y = y + self.B[f"{l}_{n}"]
            if scale:
                y = y * self.S[f"{l}_{n}"]
        return y

    def memory(self, tok, scenes):
        """[B, MEM_SLOTS, d] prefix memory (LM pre-training; stage 4's scene-word questions): slot i of a scene is the sum of the
        token embeddings of its i-th shape's (colour, shape, ordinal) words; empty slots are zero
        (a zero key and value: it adds nothing but a share of the softmax)."""
        rows, slot_of = [], []
        for b, sc in enumerate(scenes):
            for i, words in enumerate(D.memory_words(sc) if sc is not None else []):
                for w in words:
                    for c in tok.c(tok.enc(w)):
                        rows.append(c)
                        slot_of.append(b * MEM_SLOTS + i)
        mem = torch.zeros(len(scenes) * MEM_SLOTS, self.d)
        if rows:
            mem = mem.index_add(0, torch.tensor(slot_of), self.tok[torch.tensor(rows)])
        return mem.view(len(scenes), MEM_SLOTS, self.d)

    def hidden(self, ids, vq=None, mem=None):
        """vq: visual prefix of the adapter (gated by tanh(visual_gate)) in the early layers.
        mem: a prefix memory (the scene as summed word embeddings) read through the same attention
        path in the same layers, with a fixed weight of 1: LM pre-training, and the scene questions
        of stage 4's instruction data (no picture; no visual prefix then)."""
        assert vq is None or mem is None, "the early layers read a visual prefix or a word memory, not both"
        B, T = ids.shape
        H, hd = self.H, self.hd
        h = self.tok[ids]
        cos, sin = ref.rope_cos_sin(hd, torch.arange(T))
        a = self.a
        first_late = self.L - a["query_layer"] if a else self.L
        for l in range(self.L):
            x = ref.rms_norm(h, self.W[f"{l}_an"], self.eps)
            q = ref.apply_rope(self.lin(x, l, "wq").view(B, T, H, hd), cos, sin).transpose(1, 2)
            k = ref.apply_rope(self.lin(x, l, "wk", bias=False).view(B, T, H, hd), cos, sin).transpose(1, 2)
            v = self.lin(x, l, "wv", bias=False).view(B, T, H, hd).transpose(1, 2)
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            A = g = None
            if mem is not None and l < (a or ADAPTER)["early_layers"]:
                A, g = mem, None
            elif a is not None and l < a["early_layers"] and vq is not None:
                A, g = vq, self.vgate[str(l)]
            elif a is not None and l >= first_late:
                ql = a["query_len"]
                A = self.prompts[(l - first_late) * ql:(l - first_late + 1) * ql].unsqueeze(0).expand(B, -1, -1)
                g = self.gate[str(l)]
            if A is not None:
                La = A.shape[1]
                ka = self.lin(A, l, "wk", bias=False).view(B, La, H, hd).transpose(1, 2)
                va = self.lin(A, l, "wv", bias=False).view(B, La, H, hd).transpose(1, 2)
                p = torch.softmax(q @ ka.transpose(-1, -2) / math.sqrt(hd), dim=-1)
                o = o + (p @ va if g is None else torch.tanh(g) * (p @ va))
            h = h + self.lin(o.transpose(1, 2).reshape(B, T, -1), l, "wo")
            x = ref.rms_norm(h, self.W[f"{l}_fn"], self.eps)
            h = h + self.lin(F.silu(self.lin(x, l, "w1")) * self.lin(x, l, "w3"), l, "w2")
        return ref.rms_norm(h, self.norm, self.eps)

    def logits(self, hs):
        """[N, V+1]: compact vocab + one column for the (identical) unused rows, shifted by
        log(#unused) so the softmax equals the full 32000-way softmax."""
        lu = hs @ self.unused + math.log(self.n_unused)
        return torch.cat([hs @ self.out.t(), lu[:, None]], dim=1)

    def loss(self, ids, mask, vq=None, mem=None):
        hs = self.hidden(ids[:, :-1], vq, mem)
        sel = mask[:, 1:] > 0
        return F.cross_entropy(self.logits(hs[sel]), ids[:, 1:][sel])


# ---- CLIP ViT (OpenAI layout) + tiny text tower ----------------------------------------------


class ResBlock(nn.Module):
    def __init__(self, w, heads=None):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(w), nn.LayerNorm(w)
        self.attn = nn.MultiheadAttention(w, heads or w // 64, batch_first=True)
        self.c_fc, self.c_proj = nn.Linear(w, 4 * w), nn.Linear(4 * w, w)

    def forward(self, x, pad=None):
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, key_padding_mask=pad, need_weights=False)[0]
        return x + self.c_proj(ref.quick_gelu(self.c_fc(self.ln_2(x))))


class ViT(nn.Module):
    def __init__(self, c):
        super().__init__()
        w, p = c["width"], c["patch"]
        n = (c["res"] // p) ** 2 + 1
        self.conv1 = nn.Conv2d(3, w, p, p, bias=False)
        self.class_embedding = nn.Parameter(torch.randn(w) * w ** -0.5)
        self.positional_embedding = nn.Parameter(torch.randn(n, w) * w ** -0.5)
        self.ln_pre, self.ln_post = nn.LayerNorm(w), nn.LayerNorm(w)
        self.blocks = nn.ModuleList([ResBlock(w, c.get("heads")) for _ in range(c["layers"])])
        self.proj = nn.Parameter(torch.randn(w, c["out"]) * w ** -0.5)

    def forward(self, img):  # -> [B, n, out]: ln_post on all tokens, @ proj (spec 2.1)
        x = self.conv1(img).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_embedding.expand(x.shape[0], 1, -1), x], 1) + self.positional_embedding
        x = self.ln_pre(x)
        for b in self.blocks:
            x = b(x)
        return self.ln_post(x) @ self.proj

    def openai_params(self):
        """{OpenAI CLIP key (visual.* without the prefix): this module's parameter}."""
        sd = {"conv1.weight": self.conv1.weight, "class_embedding": self.class_embedding,
              "positional_embedding": self.positional_embedding, "proj": self.proj}
        for n in ("ln_pre", "ln_post"):
            sd[f"{n}.weight"], sd[f"{n}.bias"] = getattr(self, n).weight, getattr(self, n).bias
        for i, b in enumerate(self.blocks):
            p = f"transformer.resblocks.{i}."
            sd[p + "attn.in_proj_weight"], sd[p + "attn.in_proj_bias"] = b.attn.in_proj_weight, b.attn.in_proj_bias
            sd[p + "attn.out_proj.weight"], sd[p + "attn.out_proj.bias"] = b.attn.out_proj.weight, b.attn.out_proj.bias
            for n in ("ln_1", "ln_2", "c_fc", "c_proj"):
                m = getattr(b, n)
                k = p + (f"mlp.{n}" if n.startswith("c_") else n)
                sd[k + ".weight"], sd[k + ".bias"] = m.weight, m.bias
        return sd

    def state_dict_openai(self):
        return {k: v.detach().clone() for k, v in self.openai_params().items()}

    @torch.no_grad()
    def load_state_dict_openai(self, sd):
        """Inverse of state_dict_openai; every key must be present (conv1 may come flattened)."""
        for k, p in self.openai_params().items():
            p.copy_(sd[k].reshape(p.shape))


class TextTower(nn.Module):
    def __init__(self, V, c, T=32):
        super().__init__()
        w = c["text_width"]
        self.emb = nn.Embedding(V, w)
        self.pos = nn.Parameter(torch.randn(T, w) * 0.01)
        self.blocks = nn.ModuleList([ResBlock(w) for _ in range(c["text_layers"])])
        self.ln = nn.LayerNorm(w)
        self.proj = nn.Parameter(torch.randn(w, c["out"]) * w ** -0.5)

    def forward(self, ids, lens):
        x = self.emb(ids) + self.pos[: ids.shape[1]]
        pad = torch.arange(ids.shape[1])[None] >= lens[:, None]
        for b in self.blocks:
            x = b(x, pad)
        x = self.ln(x)
        return x[torch.arange(len(ids)), lens - 1] @ self.proj  # EOS token


# ---- visual adapter branch (spec 2.2) ---------------------------------------------------------


class Block(nn.Module):  # timm 0.3.2 Block
    def __init__(self, C, H, r):
        super().__init__()
        self.H = H
        self.norm1, self.norm2 = nn.LayerNorm(C), nn.LayerNorm(C)
        self.qkv, self.proj = nn.Linear(C, 3 * C), nn.Linear(C, C)
        self.fc1, self.fc2 = nn.Linear(C, int(C * r)), nn.Linear(int(C * r), C)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(B, N, 3, self.H, C // self.H).permute(2, 0, 3, 1, 4)
        o = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        x = x + self.proj(o.transpose(1, 2).reshape(B, N, C))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class Visual(nn.Module):
    def __init__(self, clip_out, dim, a):
        super().__init__()
        V = a["v_embed_dim"]
        self.ql = a["query_len"]
        self.clip_proj, self.clip_proj_norm = nn.Linear(clip_out, V), nn.LayerNorm(V)
        self.visual_query = nn.Embedding(self.ql, V)
        self.visual_blocks = nn.ModuleList([Block(V, a["v_num_heads"], a["v_mlp_ratio"]) for _ in range(a["v_depth"])])
        self.visual_proj, self.visual_proj_norm = nn.Linear(V, dim), nn.LayerNorm(dim)

    def forward(self, feats):
        c = self.clip_proj_norm(self.clip_proj(feats))
        z = torch.cat([self.visual_query.weight.unsqueeze(0).expand(len(c), -1, -1), c], 1)
        for b in self.visual_blocks:
            z = b(z)
        return self.visual_proj_norm(self.visual_proj(z[:, : self.ql]))


# ---- schedule helper ------------------------------------------------------------------------


class Budget:
    """Warmup + cosine fitted to a wall-clock budget (steps estimated after `probe` steps)."""

    def __init__(self, opts, lrs, minutes, warm=30, probe=15):
        self.opts, self.lrs, self.sec, self.warm, self.probe = opts, lrs, minutes * 60, warm, probe
        self.t0, self.total, self.step = time.time(), None, 0

    def next(self):
        """Set lr for this step; returns False when done."""
        s = self.step
        if s == self.probe:
            per = (time.time() - self.t0) / self.probe
            self.total = max(self.probe + 10, int(self.sec / per))
        if self.total is not None and s >= self.total:
            return False
        tot = self.total or 10 ** 9
        f = (s + 1) / self.warm if s < self.warm else 0.5 * (1 + math.cos(math.pi * (s - self.warm) / max(1, tot - self.warm)))
        for o, lr in zip(self.opts, self.lrs):
            for g in o.param_groups:
                g["lr"] = lr * max(f, 0.02)
        self.step += 1
        return True


def adamw(params, wd):
    dec = [p for p in params if p.dim() >= 2]
    nod = [p for p in params if p.dim() < 2]
    return torch.optim.AdamW([{"params": dec, "weight_decay": wd}, {"params": nod, "weight_decay": 0.0}],
                             betas=(0.9, 0.95))


# ---- stages -----------------------------------------------------------------------------------


def stage_lm(args, tok, out):
    path = os.path.join(out, "stage1_lm.pt")
    if os.path.exists(path):
        return torch.load(path, weights_only=False)
    torch.manual_seed(0)
    rng = random.Random(1)
    lm = LLaMA(len(tok.ids), LLAMA)
    prev = {"wall_s": 0.0, "steps": 0}
    if args.lm_init:  # continue an earlier run's LM (same vocab): a fresh warm-up + cosine on top
        prev = torch.load(args.lm_init, weights_only=False)
        lm.load_state_dict(prev["sd"])
        log(f"[lm] continuing {args.lm_init}: {prev['steps']} steps, {prev['wall_s']:.0f}s so far")
    opt = adamw(list(lm.parameters()), 0.05)
    bud = Budget([opt], [3e-3], args.lm_min)
    t0, ema = time.time(), None
    while bud.next():
        docs = [D.lm_example(rng) for _ in range(args.lm_bs)]
        ids, m = collate([example_ids(tok, p, r) for p, r, _ in docs])
        loss = lm.loss(ids, m, mem=lm.memory(tok, [sc for _, _, sc in docs]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lm.parameters(), 1.0)
        opt.step()
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        if bud.step % 100 == 0:
            log(f"[lm] step {bud.step}/{bud.total} loss {ema:.4f}")
    st = {"sd": lm.state_dict(), "wall_s": prev["wall_s"] + time.time() - t0, "steps": prev["steps"] + bud.step,
          "final_loss": ema}
    torch.save(st, path)
    log(f"[lm] done {st['steps']} steps, {st['wall_s']:.0f}s, loss {ema:.4f}")
    return st


def stage_pool(args, out, name="pool.pt", n=None, seed=12345):
    """`n` PIL scenes preprocessed to the CLIP input size (uint8). pool.pt (CLIP and stage 4) uses
    seed 12345, pool_adapt.pt (stages 3a and 4 only) 424242; the held-out split uses other seeds
    (eval.py, slot_probe, clip_probe)."""
    path = os.path.join(out, name)
    if os.path.exists(path):
        st = torch.load(path, weights_only=False)
        if st["imgs"].shape[1] != CLIP["res"]:
            sys.exit(f"{path} holds {st['imgs'].shape[1]} px pictures, the CLIP input is {CLIP['res']} px "
                     f"(--clip-res): move it away to render the pool again")
        return st
    n = args.pool if n is None else n
    t0 = time.time()
    rng = random.Random(seed)
    geo_rng = random.Random(seed + 1)  # its own stream: the same scenes with or without --geo-jitter
    R = CLIP["res"]
    imgs = np.zeros((n, R, R, 3), np.uint8)
    scenes = []
    for i in range(n):
        sc = D.sample_scene(rng)
        if args.geo_jitter:
            D.jitter_geometry(sc, geo_rng)
        im = D.render_pil(sc, rng)
        x = D.clip_preprocess(im, R)  # normalised CHW; store the resized/cropped uint8 instead
        imgs[i] = np.clip(np.round((x.transpose(1, 2, 0) * D.CLIP_STD + D.CLIP_MEAN) * 255), 0, 255).astype(np.uint8)
        scenes.append(sc)
    st = {"imgs": torch.from_numpy(imgs), "scenes": scenes, "wall_s": time.time() - t0}
    torch.save(st, path)
    log(f"[pool] {name}: {n} images in {st['wall_s']:.0f}s")
    return st


MEAN = torch.tensor(D.CLIP_MEAN).view(1, 3, 1, 1)
STD = torch.tensor(D.CLIP_STD).view(1, 3, 1, 1)


def to_input(u8):  # [B,R,R,3] uint8 -> normalised [B,3,R,R]
    return (u8.permute(0, 3, 1, 2).float() / 255 - MEAN) / STD


def text_batch(tok, texts):
    """Texts for the CLIP text tower: compact ids ending in EOS, zero-padded, and their lengths."""
    tids = [tok.c(tok.enc(t) + [EOS]) for t in texts]
    lens = torch.tensor([len(t) for t in tids])
    ids = torch.zeros(len(texts), int(lens.max()), dtype=torch.long)
    for i, t in enumerate(tids):
        ids[i, : len(t)] = torch.tensor(t)
    return ids, lens


def check_clip_heads(st, path):
    """Attention weights have the same shapes for any head count, so a checkpoint of another
    head count would load silently; checkpoints record theirs (those without predate the key)."""
    if st.get("heads", CLIP["heads"]) != CLIP["heads"]:
        sys.exit(f"{path} was trained with {st['heads']} vision heads, this code has {CLIP['heads']}")


def stage_clip(args, tok, pool, out):
    path = os.path.join(out, "stage2_clip.pt")
    if os.path.exists(path):
        st = torch.load(path, weights_only=False)
        check_clip_heads(st, path)
        return st
    torch.manual_seed(2)
    rng = random.Random(3)
    vit, txt = ViT(CLIP), TextTower(len(tok.ids), CLIP)
    scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    prev = {"wall_s": 0.0, "steps": 0}
    if not args.clip_init:
        init_patch_embedding(vit, to_input(pool["imgs"][:2000]))
    else:  # continue an earlier CLIP run (both towers and the temperature, or the ViT alone)
        prev = torch.load(args.clip_init, weights_only=False)
        check_clip_heads(prev, args.clip_init)
        vit.load_state_dict(widen_patches(prev["sd"], CLIP["patch"]))
        if "txt" in prev:
            txt.load_state_dict(prev["txt"])
            scale.data.fill_(prev["scale"])
        log(f"[clip] continuing {args.clip_init}: {prev['steps']} steps, {prev['wall_s']:.0f}s so far"
            + ("" if "txt" in prev else " (vision tower only: a fresh text tower)"))
    # Dense term: each patch token is matched, CLIP-style, against the text tower's embeddings of
    # the 36 object phrases ("a red circle", ...) and of an empty text (EOS only) for background.
    # The global caption loss alone let colour and count carry retrieval and never taught shape
    # types; a per-patch target gives the ViT the local signal it lacks (see patch_phrase_labels
    # and tools/train/README.md, Findings).
    phrases = [D._item(dict(colour=c, shape=t)) for c in D.COLOURS for t in D.SHAPES] + [""]
    phrase_ids, phrase_lens = text_batch(tok, phrases)
    dense_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    if args.clip_init and "dense_scale" in prev:
        dense_scale.data.fill_(prev["dense_scale"])
    labels_all = pool_patch_labels(pool) if args.clip_dense > 0 else None
    params = list(vit.parameters()) + list(txt.parameters()) + [scale, dense_scale]
    opt = adamw(params, 0.1)

    def clip_loss(idx, x, train_vit=True):
        """(loss, in-batch image->text top-1, patch->phrase top-1 on object patches)."""
        # texts: one description view per image (data.caption_view), then `clip_hard` hard
        # negatives per image (the same view of the scene with one detail changed). A text is a
        # positive for every image it truly describes.
        views = [rng.choices(D.VIEWS, D.VIEW_W)[0] for _ in idx]
        texts = [D.caption_view(pool["scenes"][i], v) for i, v in zip(idx, views)]
        texts += [D.caption_view(D.hard_negative(pool["scenes"][i], rng), v)
                  for i, v in zip(idx, views) for _ in range(args.clip_hard)]
        ids, lens = text_batch(tok, texts)
        B = len(idx)
        with torch.set_grad_enabled(train_vit):
            tokens = vit(x)
        fi = F.normalize(tokens[:, 0], dim=-1)
        ft = F.normalize(txt(ids, lens), dim=-1)
        lg = scale.exp().clamp(max=100) * fi @ ft.t()  # [B images, all texts]
        true_texts = [{D.caption_view(pool["scenes"][i], v) for v in D.VIEWS} for i in idx]
        same = torch.tensor([[t in tt for t in texts] for tt in true_texts], dtype=torch.float32)
        i2t = torch.sum(-same / same.sum(1, keepdim=True) * F.log_softmax(lg, 1), 1).mean()
        sq = same[:, :B]  # text -> image over the batch's own captions (symmetric CLIP term)
        t2i = torch.sum(-sq / sq.sum(0, keepdim=True) * F.log_softmax(lg[:, :B], 0), 0).mean()
        loss = 0.5 * (i2t + t2i)
        acc = same[torch.arange(B), lg.argmax(1)].mean().item()
        dense_acc = float("nan")
        if args.clip_dense > 0:
            labels = labels_all[idx].flatten()  # [B * grid²]
            fp = F.normalize(tokens[:, 1:].flatten(0, 1), dim=-1)
            fph = F.normalize(txt(phrase_ids, phrase_lens), dim=-1)
            lgd = dense_scale.exp().clamp(max=100) * fp @ fph.t()
            obj, bg = (labels >= 0) & (labels != BACKGROUND), labels == BACKGROUND
            dense = F.cross_entropy(lgd[obj], labels[obj])
            if bg.any():  # background patches outnumber object patches ~3:1; weighted down
                dense = dense + args.clip_bg * F.cross_entropy(lgd[bg], labels[bg])
            loss = loss + args.clip_dense * dense
            dense_acc = (lgd[obj].argmax(1) == labels[obj]).float().mean().item()
        return loss, acc, dense_acc

    t0 = time.time()
    if args.clip_init and "txt" not in prev:
        # A fresh text tower against a trained ViT: align the text tower (and temperatures) to the
        # frozen image tokens first, so that its random start does not pull the ViT around.
        opt_txt = adamw(list(txt.parameters()) + [scale, dense_scale], 0.1)
        ema = None
        for s in range(args.clip_txt_warm):
            for g in opt_txt.param_groups:
                g["lr"] = 1e-3 * min(1.0, (s + 1) / 30)
            idx = rng.sample(range(len(pool["scenes"])), args.clip_bs)
            loss, acc, dense_acc = clip_loss(idx, to_input(pool["imgs"][idx]), train_vit=False)
            opt_txt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt_txt.step()
            ema = loss.item() if ema is None else 0.97 * ema + 0.03 * loss.item()
            if s % 25 == 0:
                log(f"[clip] text warm-up {s}/{args.clip_txt_warm} loss {ema:.4f} batch i2t top1 {acc:.2f} "
                    f"patch phrase top1 {dense_acc:.2f}")
    bud = Budget([opt], [1e-3], args.clip_min)
    N = len(pool["scenes"])
    ema = None
    while bud.next():
        idx = rng.sample(range(N), args.clip_bs)
        x = to_input(pool["imgs"][idx])
        if rng.random() < 0.5:  # brightness / contrast jitter (channel-wise) for shade robustness
            x = x * (1 + 0.1 * torch.randn(len(idx), 3, 1, 1)) + 0.1 * torch.randn(len(idx), 3, 1, 1)
        loss, acc, dense_acc = clip_loss(idx, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema = loss.item() if ema is None else 0.97 * ema + 0.03 * loss.item()
        if bud.step % 25 == 0:
            log(f"[clip] step {bud.step}/{bud.total} loss {ema:.4f} batch i2t top1 {acc:.2f} patch phrase top1 {dense_acc:.2f}")
    st = {"sd": vit.state_dict(), "txt": txt.state_dict(), "scale": scale.item(), "dense_scale": dense_scale.item(),
          "heads": CLIP["heads"],
          "wall_s": prev["wall_s"] + time.time() - t0, "steps": prev["steps"] + bud.step, "final_loss": ema}
    st["probe"] = clip_probe(st)
    torch.save(st, path)
    log(f"[clip] done {st['steps']} steps, {st['wall_s']:.0f}s, loss {ema:.4f}")
    log(f"[clip] ridge probes (CLS token; patch_*: the token under the leftmost shape), held-out pictures: {st['probe']}")
    return st


BACKGROUND = len(D.COLOURS) * len(D.SHAPES)  # dense class of patches no shape touches (its phrase: EOS only)
SUB = 4  # coverage of a patch is measured on SUB x SUB points inside it


def patch_phrase_labels(scene, min_cover=0.25):
    """Per patch of the CLIP grid: the index (colour * 6 + shape) of the object covering most of
    it, if it covers at least `min_cover`; BACKGROUND where no object touches the patch; -1
    (ignored) for patches only grazed by a shape. Coverage is exact geometry (the polygon
    render_pil draws, or the disc), sampled at SUB x SUB points per patch; an object too small
    to cover `min_cover` of any patch still labels the patch it covers most, so every object has
    at least one labelled patch. (The fourth model's labels were discs of 0.9 r around the
    centre: for triangles and stars half of those patch centres were background, and 7 % of
    objects got no patch.) Pool pictures are square, so scene coordinates map onto the grid."""
    g = CLIP["res"] // CLIP["patch"]
    pts = (np.arange(g * SUB) + 0.5) / (g * SUB)
    px, py = np.meshgrid(pts, pts)  # py: rows (y grows downwards, as in the renderers)
    cover = []
    for o in scene["objects"]:
        if o["shape"] == "circle":
            inside = (px - o["x"]) ** 2 + (py - o["y"]) ** 2 <= o["r"] ** 2
        else:
            inside = D._inside_poly(px, py, D.polygon(o["shape"], o["x"], o["y"], o["r"], o["rot"], **D.geometry(o)))
        cover.append(inside.reshape(g, SUB, g, SUB).mean(axis=(1, 3)))
    cover = np.stack(cover)  # [objects, g, g]
    best, best_cover = cover.argmax(0), cover.max(0)
    cls = np.array([D.COLOURS.index(o["colour"]) * len(D.SHAPES) + D.SHAPES.index(o["shape"]) for o in scene["objects"]])
    labels = np.where(best_cover >= min_cover, cls[best], -1)
    labels[best_cover == 0] = BACKGROUND
    for i, c in enumerate(cover):
        if not (labels == cls[i]).any():
            r, col = np.unravel_index(c.argmax(), c.shape)
            labels[r, col] = cls[i]
    return torch.from_numpy(labels.flatten().astype(np.int64))


def pool_patch_labels(pool):
    """patch_phrase_labels of every pool scene, computed once: [N, grid²]."""
    if "patch_labels" not in pool:
        t0 = time.time()
        pool["patch_labels"] = torch.stack([patch_phrase_labels(sc) for sc in pool["scenes"]])
        log(f"[clip] patch labels of {len(pool['scenes'])} scenes in {time.time() - t0:.0f}s")
    return pool["patch_labels"]


def area_matrix(n_old, n_new):
    """[n_old, n_new]: old pixel i as the area average of the new pixels it covers (each old pixel
    spans n_new / n_old new ones; a new pixel cut by a boundary counts with the part inside)."""
    s = n_new / n_old
    a = torch.zeros(n_old, n_new, dtype=torch.float64)
    for i in range(n_old):
        for j in range(n_new):
            a[i, j] = max(0.0, min((i + 1) * s, j + 1) - max(i * s, j)) / s
    return a


def widen_patches(sd, patch):
    """A ViT state dict with patch p, for a ViT with patch q > p on q/p times the input size (the
    same patch grid, so every other tensor keeps its shape). The new kernel is the old one applied
    to the area average of the q x q patch down to p x p (W' = Aᵀ W A per channel, A =
    area_matrix(p, q)), so the wider ViT on a picture computes exactly what the old one computes
    on that picture averaged down by q/p. For q = k·p that spreads each weight over its k x k
    block at 1/k² of its value. Continuing CLIP training from there starts at the old features and
    can learn the detail the finer pixels add."""
    w = sd["conv1.weight"]
    p = w.shape[-1]
    if p == patch:
        return sd
    assert patch > p, f"cannot narrow patch {p} to {patch}"
    a = area_matrix(p, patch)
    sd = dict(sd)
    sd["conv1.weight"] = torch.einsum("ocab,aj,bk->ocjk", w.double(), a, a).to(w.dtype)
    log(f"[clip] conv1 widened from patch {p} to {patch} (input x{patch / p:g})")
    return sd


@torch.no_grad()
def init_patch_embedding(vit, x):
    """Start conv1 (the linear patch embedding) from the whitened principal components of image
    patches instead of noise: in 4-minute supervised probes (shape-type presence, 64 px, patch 8)
    the ViT reached 65.9 % instead of 62.9 % (always-no: 58.0 %). Rows beyond the patch
    dimension keep a small random init."""
    w = vit.conv1.weight
    p = w.shape[-1]
    patches = F.unfold(x, p, stride=p).transpose(1, 2).reshape(-1, w[0].numel())
    patches = patches - patches.mean(0)
    eigval, eigvec = torch.linalg.eigh(patches.T @ patches / len(patches))  # ascending
    k = min(w.shape[0], w[0].numel())
    top = eigvec[:, -k:].flip(1) / (eigval[-k:].flip(0).clamp(min=0).sqrt() + 1e-2)
    new = torch.randn(w.shape[0], w[0].numel()) * 0.02
    new[:k] = top.T
    w.copy_(new.view_as(w))


def heldout_pictures(n, seed):
    """`n` fresh scenes from `seed` (never a training seed) as normalised CLIP input [n, 3, R, R]:
    even ones drawn by the numpy renderer that training never sees, odd ones by PIL."""
    rng = random.Random(seed)
    xs, scenes = [], []
    for i in range(n):
        sc = D.sample_scene(rng)
        img = D.render_pil(sc, rng) if i % 2 else D.render_numpy(sc, rng, 224)
        xs.append(D.clip_preprocess(img, CLIP["res"]))
        scenes.append(sc)
    return torch.from_numpy(np.stack(xs)), scenes


@torch.no_grad()
def clip_probe(clip_st, n=1500, n_train=1200):
    """What the frozen CLIP features know, before stage 4 uses them: ridge probes on the CLS
    feature of `n` fresh pictures (seed 555, half of them by the numpy renderer that training never
    sees), fitted on `n_train` and scored on the rest, from the CLS token and from the patch token
    under the leftmost shape's centre. Chance: count 25 %, colour 17 %, type 17 %."""
    vit = ViT(CLIP)
    vit.load_state_dict(clip_st["sd"])
    vit.eval()
    x, scenes = heldout_pictures(n, 555)
    tokens = torch.cat([vit(x[i:i + 250]) for i in range(0, n, 250)]).double()
    # the patch token under the leftmost shape's centre: what stage 4 reads of that shape
    g = CLIP["res"] // CLIP["patch"]
    at = torch.tensor([1 + min(int(s["objects"][0]["y"] * g), g - 1) * g + min(int(s["objects"][0]["x"] * g), g - 1)
                       for s in scenes])
    tr, te = slice(0, n_train), slice(n_train, n)

    def probe(feat, labels, k):
        feat = torch.cat([feat, torch.ones(n, 1, dtype=feat.dtype)], 1)
        y = torch.tensor(labels)
        onehot = F.one_hot(y, k).double()
        w = torch.linalg.solve(feat[tr].T @ feat[tr] + torch.eye(feat.shape[1], dtype=feat.dtype),
                               feat[tr].T @ onehot[tr])
        return round(((feat[te] @ w).argmax(1) == y[te]).double().mean().item(), 3)

    cls, patch = tokens[:, 0], tokens[torch.arange(n), at]
    colours = [D.COLOURS.index(s["objects"][0]["colour"]) for s in scenes]
    types = [D.SHAPES.index(s["objects"][0]["shape"]) for s in scenes]
    return {"count": probe(cls, [len(s["objects"]) - 1 for s in scenes], 4),
            "colour_of_leftmost": probe(cls, colours, 6), "type_of_leftmost": probe(cls, types, 6),
            "patch_colour_of_leftmost": probe(patch, colours, 6), "patch_type_of_leftmost": probe(patch, types, 6)}


@torch.no_grad()
def clip_feats(vit, u8, bs=256):
    return torch.cat([vit(to_input(u8[i:i + bs])) for i in range(0, len(u8), bs)]).half()


def zero_image_feats(vit):  # text-only samples: all-zero [3,R,R] tensor, not normalised (spec 4)
    with torch.no_grad():
        return vit(torch.zeros(1, 3, CLIP["res"], CLIP["res"]))


IMG_KIND_W = {"caption": 0.34, "colour": 0.2, "count": 0.12, "presence": 0.12, "leftright": 0.22}


def img_example(rng, scene):
    qs = {k: (q, a) for k, q, a in D.questions(scene, rng)}
    kinds = [k for k in IMG_KIND_W if k in qs]
    k = rng.choices(kinds, [IMG_KIND_W[x] for x in kinds])[0]
    return qs[k]


def scene_question_batch(tok, rng, scenes):
    """(ids, answer mask) of one image question per scene, drawn by `img_example`."""
    return collate([example_ids(tok, D.format_prompt(q), a) for q, a in (img_example(rng, sc) for sc in scenes)])


# ---- slot code: what the visual tokens should say (memory distillation) ----------------------


class SlotCode:
    """The prefix memory of LM pre-training as a target for the visual tokens: slot i of a scene
    is emb(colour) + emb(type) + emb(ordinal i) of its i-th shape from the left (train.LLaMA.memory),
    empty slots are zero. `logits` scores a token against the 36 (colour, type) candidates of its
    slot by negative squared distance, so "which memory is this token nearest to" is a classifier
    whose accuracy is what the LM can read."""

    def __init__(self, lm, tok):
        E = lm.tok.detach()

        def emb(w):
            return E[torch.tensor(tok.c(tok.enc(w)))].sum(0)
        self.lm, self.tok = lm, tok
        self.ct = torch.stack([emb(c) + emb(t) for c in D.COLOURS for t in D.SHAPES])  # [36, d]
        self.ordinal = torch.zeros(MEM_SLOTS, E.shape[1])
        self.ordinal[:len(D.ORDINALS)] = torch.stack([emb(o) for o in D.ORDINALS])

    @torch.no_grad()
    def targets(self, scenes):
        """([N, MEM_SLOTS, d] memory, [N, MEM_SLOTS] label colour*6+type or -1 for an empty slot)."""
        mem = torch.cat([self.lm.memory(self.tok, scenes[i:i + 1000]) for i in range(0, len(scenes), 1000)])
        y = torch.full((len(scenes), MEM_SLOTS), -1, dtype=torch.long)
        for b, sc in enumerate(scenes):
            for i, o in enumerate(sc["objects"]):
                y[b, i] = D.COLOURS.index(o["colour"]) * len(D.SHAPES) + D.SHAPES.index(o["shape"])
        return mem, y

    def logits(self, vq):  # [B, MEM_SLOTS, d] -> [B, MEM_SLOTS, 36]
        cand = self.ct[None, None] + self.ordinal[None, :, None]
        return -((vq[:, :, None] - cand) ** 2).sum(-1)

    def loss(self, vq, mem, y, ce=0.1):
        """MSE to the memory on every slot (an empty slot's target is zero, as in pre-training)
        plus `ce` x cross-entropy of the occupied slots' nearest-memory classifier (the MSE alone
        spends its effort on the exact vector, the classifier on what the LM distinguishes)."""
        occ = y >= 0
        return F.mse_loss(vq, mem) + ce * F.cross_entropy(self.logits(vq)[occ], y[occ])

    @torch.no_grad()
    def score(self, vq, y):
        """Nearest-memory accuracy: per occupied slot (colour, type, both), and per scene (every
        occupied slot right and every empty slot nearer zero than any candidate)."""
        lg = self.logits(vq)
        occ, pred = y >= 0, lg.argmax(-1)
        empty_ok = vq.norm(dim=-1) < (-lg.max(-1).values).clamp(min=0).sqrt()
        n = len(D.SHAPES)
        return {"slot": round((pred[occ] == y[occ]).float().mean().item(), 4),
                "colour": round((pred[occ] // n == y[occ] // n).float().mean().item(), 4),
                "type": round((pred[occ] % n == y[occ] % n).float().mean().item(), 4),
                "scene": round(torch.where(occ, pred == y, empty_ok).all(1).float().mean().item(), 4)}


def slot_probe(vit, vis, code, n=600):
    """Held-out nearest-memory accuracy of the visual tokens on `n` fresh scenes (seed 777; even
    ones by the numpy renderer that training never sees, odd ones by PIL)."""
    x, scenes = heldout_pictures(n, 777)
    with torch.no_grad():
        vq = vis(vit(x).half().float())
    _, y = code.targets(scenes)
    return {"all": code.score(vq, y), "numpy": code.score(vq[0::2], y[0::2]), "pil": code.score(vq[1::2], y[1::2])}


def stage_visual(args, tok, lm_st, vit, feats, scenes, out):
    """Stage 3a: the visual branch alone learns to write the scene as the LM's prefix memory
    (image-text data: the targets are the caption's words; only the visual group is trained, and
    without the LM's forward it sees ~290 pictures a second on two threads, a stage-4 step ~100).
    Stage 4 then starts from a visual branch whose tokens the frozen LM already reads."""
    path = os.path.join(out, "stage3a_visual.pt")
    if os.path.exists(path):
        return torch.load(path, weights_only=False)
    torch.manual_seed(4)
    lm = LLaMA(len(tok.ids), LLAMA)
    lm.load_state_dict(lm_st["sd"])
    code = SlotCode(lm, tok)
    mem, y = code.targets(scenes)
    vis = Visual(CLIP["out"], LLAMA["dim"], ADAPTER)
    prev = {"wall_s": 0.0, "steps": 0}
    if args.distill_init:  # continue an earlier stage 3a on the same LM and CLIP: fresh warm-up + cosine
        prev = torch.load(args.distill_init, weights_only=False)
        vis.load_state_dict(prev["vis"])
        log(f"[visual] continuing {args.distill_init}: {prev['steps']} steps, {prev['wall_s']:.0f}s so far")
    opt = adamw(list(vis.parameters()), 0.02)
    bud = Budget([opt], [args.lr_distill], args.distill_min, warm=100)
    t0, ema, N = time.time(), None, len(scenes)
    gen = torch.Generator().manual_seed(6)
    while bud.next():
        idx = torch.randint(0, N, (args.distill_bs,), generator=gen)
        loss = code.loss(vis(feats[idx].float()), mem[idx], y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vis.parameters(), 1.0)
        opt.step()
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        if bud.step % 250 == 0:
            log(f"[visual] step {bud.step}/{bud.total} loss {ema:.4f}")
    vis.eval()
    st = {"vis": vis.state_dict(), "wall_s": prev["wall_s"] + time.time() - t0, "steps": prev["steps"] + bud.step,
          "final_loss": ema, "probe": slot_probe(vit, vis, code)}
    torch.save(st, path)
    log(f"[visual] done {st['steps']} steps, {st['wall_s']:.0f}s, loss {ema:.4f}, held-out {st['probe']}")
    return st


def trainable_groups(lm, vis):
    visual = list(vis.parameters()) + list(lm.vgate.parameters())
    late = ([lm.prompts] + list(lm.gate.parameters()) + list(lm.B.parameters()) + list(lm.S.parameters())
            + [p for n, p in lm.W.items() if n.endswith("_an") or n.endswith("_fn")] + [lm.norm])
    return visual, late


def build_adapter_model(tok, lm_sd):
    lm = LLaMA(len(tok.ids), LLAMA, ADAPTER)
    missing, unexpected = lm.load_state_dict(lm_sd, strict=False)
    assert not unexpected
    vis = Visual(CLIP["out"], LLAMA["dim"], ADAPTER)
    for p in lm.parameters():
        p.requires_grad_(False)
    return lm, vis


def stage_adapt(args, tok, lm_st, vit, feats, scenes, vis_st, out):
    path = os.path.join(out, "stage3_adapter.pt")
    if os.path.exists(path):
        return torch.load(path, weights_only=False)
    torch.manual_seed(4)
    rng = random.Random(5)
    f0 = zero_image_feats(vit)
    lm, vis = build_adapter_model(tok, lm_st["sd"])
    code = SlotCode(lm, tok)
    mem_all, y_all = code.targets(scenes)
    prev = {"wall_s": 0.0, "steps": 0}
    if vis_st is not None:  # stage 3a's visual branch; the gates stay zero-initialised
        vis.load_state_dict(vis_st["vis"])
    if args.adapt_init:  # continue an earlier stage 4 on the same LM and CLIP: fresh warm-up + cosine
        prev = torch.load(args.adapt_init, weights_only=False)
        lm.load_state_dict(prev["lm"])
        vis.load_state_dict(prev["vis"])
        log(f"[adapt] continuing {args.adapt_init}: {prev['steps']} steps, {prev['wall_s']:.0f}s so far")
    g_vis, g_late = trainable_groups(lm, vis)
    for p in g_vis + g_late:
        p.requires_grad_(True)
    assert not ({id(p) for p in g_vis} & {id(p) for p in g_late})
    n_train = sum(p.numel() for p in g_vis + g_late)
    # the zero-initialised visual gates get a 10x learning rate: with only a few thousand steps
    # they would otherwise stay near tanh(g) = 0, and the gradient reaching the visual branch
    # is proportional to tanh(g)
    vgates = list(lm.vgate.parameters())
    gate_ids = {id(p) for p in vgates}
    opt_v = adamw([p for p in g_vis if id(p) not in gate_ids], 0.02)
    opt_g = adamw(vgates, 0.0)
    opt_l = adamw(g_late, 0.02)
    bud = Budget([opt_v, opt_g, opt_l], [args.lr_vis, 10 * args.lr_vis, args.lr_late], args.adapt_min, warm=50)
    N = len(scenes)
    t0, ema_i, ema_t, ema_q = time.time(), None, None, None
    while bud.next():
        # image-text data -> visual branch + early visual gates only
        idx = [rng.randrange(N) for _ in range(args.img_bs)]
        ids, m = scene_question_batch(tok, rng, [scenes[i] for i in idx])
        vq = vis(feats[idx].float())
        li = lm.loss(ids, m, vq)
        loss_v = li
        if args.adapt_mem > 0:
            # Memory distillation: the LM learned in pre-training to read a scene from prefix-memory
            # slots (summed embeddings of colour, type, ordinal words); keep the visual tokens on
            # that code (stage 3a's loss). The caption's words are the target, so this is still
            # image-text data, and it updates only the visual group.
            loss_v = li + args.adapt_mem * code.loss(vq, mem_all[idx], y_all[idx])
        gi = torch.autograd.grad(loss_v, g_vis, allow_unused=True)
        # instruction data (text-only, zero image) -> late prompts, gates, biases, scales, norms
        ids, m = collate([example_ids(tok, D.format_prompt(q), a) for _, q, a in
                          (D.text_task(rng) for _ in range(args.txt_bs))])
        with torch.no_grad():
            vq0 = vis(f0).expand(args.txt_bs, -1, -1)
        lt = lm.loss(ids, m, vq0)
        loss_l = lt
        if args.txt_mem > 0:
            # Scene questions as language data: the scene is given in words (the pre-training prefix
            # memory), not as a picture. Without them the late group learns only text tasks, whose
            # "What is ...?" questions pull "What colour is the hexagon?" towards answers like "7."
            # (the seventh model answered 11 of 200 held-out colour questions off-type).
            scs = [D.sample_scene(rng) for _ in range(args.txt_mem)]
            ids, m = scene_question_batch(tok, rng, scs)
            lq = lm.loss(ids, m, None, lm.memory(tok, scs).detach())
            loss_l = (args.txt_bs * lt + args.txt_mem * lq) / (args.txt_bs + args.txt_mem)
        gl = torch.autograd.grad(loss_l, g_late, allow_unused=True)
        for ps, gs, opts in ((g_vis, gi, (opt_v, opt_g)), (g_late, gl, (opt_l,))):
            for p, g in zip(ps, gs):
                p.grad = g
            torch.nn.utils.clip_grad_norm_(ps, 1.0)
            for o in opts:
                o.step()
                o.zero_grad(set_to_none=True)
        ema_i = li.item() if ema_i is None else 0.98 * ema_i + 0.02 * li.item()
        ema_t = lt.item() if ema_t is None else 0.98 * ema_t + 0.02 * lt.item()
        if args.txt_mem > 0:
            ema_q = lq.item() if ema_q is None else 0.98 * ema_q + 0.02 * lq.item()
        if bud.step % 50 == 0:
            log(f"[adapt] step {bud.step}/{bud.total} img loss {ema_i:.4f} txt loss {ema_t:.4f}"
                + (f" scene-words loss {ema_q:.4f}" if ema_q is not None else ""))
        if bud.step % 500 == 0:
            torch.save({"lm": lm.state_dict(), "vis": vis.state_dict(), "partial": True}, path + ".partial")
    n_vis = sum(p.numel() for p in g_vis)
    n_late = sum(p.numel() for p in g_late)
    st = {"lm": lm.state_dict(), "vis": vis.state_dict(), "wall_s": prev["wall_s"] + time.time() - t0,
          "steps": prev["steps"] + bud.step,
          "img_loss": ema_i, "txt_loss": ema_t, "scene_words_loss": ema_q, "txt_mem": args.txt_mem, "n_vis": n_vis, "n_late": n_late, "n_train": n_train}
    vis.eval()
    st["probe"] = slot_probe(vit, vis, code)
    torch.save(st, path)
    log(f"[adapt] held-out slot code {st['probe']}")
    log(f"[adapt] done {st['steps']} steps, {st['wall_s']:.0f}s, img {ema_i:.4f} txt {ema_t:.4f}")
    return st


# ---- export -----------------------------------------------------------------------------------


def export(tok, lm_st, clip_st, ad_st, dst):
    os.makedirs(os.path.join(dst, "llama"), exist_ok=True)
    lm = LLaMA(len(tok.ids), LLAMA, ADAPTER)
    lm.load_state_dict(ad_st["lm"])
    vis = Visual(CLIP["out"], LLAMA["dim"], ADAPTER)
    vis.load_state_dict(ad_st["vis"])
    base = LLaMA(len(tok.ids), LLAMA)
    base.load_state_dict(lm_st["sd"])  # frozen base: its norms go to the Meta file, adapted ones to the adapter
    d = LLAMA["dim"]
    gid = torch.tensor(tok.ids)
    with torch.no_grad():
        emb = base.tok.mean(0, keepdim=True).repeat(VOCAB, 1)
        emb[gid] = base.tok
        outw = base.unused.detach().view(1, d).repeat(VOCAB, 1)
        outw[gid] = base.out
    meta = {"tok_embeddings.weight": emb, "output.weight": outw, "norm.weight": base.norm}
    for l in range(LLAMA["n_layers"]):
        for n in LLaMA.LIN:
            meta[f"layers.{l}.{meta_group(n)}.{n}.weight"] = base.W[f"{l}_{n}"]
        meta[f"layers.{l}.attention_norm.weight"] = base.W[f"{l}_an"]
        meta[f"layers.{l}.ffn_norm.weight"] = base.W[f"{l}_fn"]
    hd = d // LLAMA["n_heads"]
    meta["rope.freqs"] = 1.0 / (10000.0 ** (torch.arange(0, hd, 2).float() / hd))
    meta = {k: v.detach().clone().half() for k, v in meta.items()}
    torch.save(meta, os.path.join(dst, "llama", "consolidated.00.pth"))
    with open(os.path.join(dst, "llama", "params.json"), "w") as f:
        json.dump(LLAMA, f)
    shutil.copy(TOKENIZER, os.path.join(dst, "llama", "tokenizer.model"))
    # CLIP (OpenAI layout, visual.* only): fp16 conv/linear/proj, fp32 LN + embeddings
    vit = ViT(CLIP)
    vit.load_state_dict(clip_st["sd"])
    csd = {}
    for k, v in vit.state_dict_openai().items():
        keep32 = ".ln_" in "." + k or k.startswith("ln_") or k in ("class_embedding", "positional_embedding")
        csd["visual." + k] = v.float() if keep32 else v.half()
    csd["input_resolution"] = CLIP["res"]
    csd["vision_heads"] = CLIP["heads"]  # our extension: OpenAI's layout implies width / 64
    torch.save(csd, os.path.join(dst, "clip.pth"))
    # adapter
    a = {}
    for k, v in vis.state_dict().items():
        k = k.replace("visual_blocks.", "visual_blocks.").replace(".fc1.", ".mlp.fc1.").replace(".fc2.", ".mlp.fc2.")
        k = k.replace(".qkv.", ".attn.qkv.").replace(".proj.", ".attn.proj.") if k.startswith("visual_blocks.") else k
        a[k] = v
    a["adapter_query.weight"] = lm.prompts
    for l in range(LLAMA["n_layers"]):
        p = f"llama.layers.{l}."
        a[p + "attention.gate"] = lm.gate[str(l)]
        if l < ADAPTER["early_layers"]:
            a[p + "attention.visual_gate"] = lm.vgate[str(l)]
        for n in LLaMA.BIAS:
            a[p + f"{meta_group(n)}.{n}.bias"] = lm.B[f"{l}_{n}"]
        for n in LLaMA.LIN:
            a[p + f"{meta_group(n)}.{n}.scale"] = lm.S[f"{l}_{n}"]
        a[p + "attention_norm.weight"] = lm.W[f"{l}_an"]
        a[p + "ffn_norm.weight"] = lm.W[f"{l}_fn"]
    a["llama.norm.weight"] = lm.norm
    a = {k: v.detach().clone().float() for k, v in a.items()}
    torch.save({"model": a, "config": dict(ADAPTER)}, os.path.join(dst, "adapter.pth"))
    sizes = {f: os.path.getsize(os.path.join(dst, f)) for f in ("llama/consolidated.00.pth", "clip.pth", "adapter.pth")}
    log(f"[export] {dst}: {sizes}")
    return sizes


def parity_check(dst, tok, ad_st, clip_st, n=3):
    """Greedy answers of the training module vs tools/reference/model.py on the exported files."""
    params, llama_sd = ref.load_llama(os.path.join(dst, "llama"))
    vis_sd = ref.load_clip(os.path.join(dst, "clip.pth"))
    asd, acfg = ref.load_adapter(os.path.join(dst, "adapter.pth"))
    cfg = ref.AdapterConfig.build(params, acfg)
    rng = random.Random(777)
    res = []
    for i in range(n):
        sc = D.sample_scene(rng)
        x = torch.from_numpy(D.clip_preprocess(D.render_pil(sc, rng), CLIP["res"]))[None]
        vq = ref.forward_visual(asd, cfg, ref.clip_encode_image(vis_sd, x))
        dec = ref.Decoder(cfg, llama_sd, asd, vq)
        p = [BOS] + tok.enc(D.format_prompt("Describe this image."))
        gen, _, _ = ref.greedy_generate(dec, p, 40)
        res.append((D.caption(sc), tok.sp.decode(gen)))
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(HERE, "runs", "default"))
    ap.add_argument("--dst", default=os.path.join(REPO, "www", "models", "default", "src"))
    ap.add_argument("--lm-min", type=float, default=100)
    ap.add_argument("--clip-min", type=float, default=90)
    ap.add_argument("--adapt-min", type=float, default=30)
    ap.add_argument("--pool", type=int, default=24000)
    ap.add_argument("--clip-res", type=int, default=CLIP["res"], help="CLIP input size in pixels")
    ap.add_argument("--clip-patch", type=int, default=CLIP["patch"], help="CLIP patch size; with --clip-init "
                    "from a ViT of a smaller patch on the same grid its patch embedding is widened (widen_patches)")
    ap.add_argument("--geo-jitter", action=argparse.BooleanOptionalAction, default=True,
                    help="pools draw every star and cross with its own proportions (data.jitter_geometry; "
                    "from the seventh model on)")
    ap.add_argument("--lm-bs", type=int, default=48)
    ap.add_argument("--clip-bs", type=int, default=64)
    ap.add_argument("--clip-hard", type=int, default=3)
    ap.add_argument("--clip-dense", type=float, default=1.0, help="weight of the per-patch phrase term (0: off)")
    ap.add_argument("--clip-bg", type=float, default=0.3, help="weight of the background patches in the dense term")
    ap.add_argument("--clip-txt-warm", type=int, default=300, help="--clip-init from a vision tower alone "
                    "(from_package.py): text-tower steps against the frozen ViT before joint training")
    ap.add_argument("--adapt-mem", type=float, default=1.0, help="stage 4: weight of the memory-distillation "
                    "term (stage 3a's loss: visual tokens vs the pre-training prefix memory; 0: off)")
    ap.add_argument("--adapt-pool", type=int, default=48000, help="extra PIL scenes (pool_adapt.pt, another "
                    "seed) for stages 3a and 4, beside the CLIP pool: the visual branch overfits 24,000")
    ap.add_argument("--distill-min", type=float, default=20, help="stage 3a (visual branch -> prefix-memory "
                    "code) budget in minutes; 0 skips it")
    ap.add_argument("--distill-init", default="", help="a stage3a_visual.pt to continue (same LM and CLIP); "
                    "wall time and steps add up")
    ap.add_argument("--distill-bs", type=int, default=128)
    ap.add_argument("--lr-distill", type=float, default=1e-3)
    ap.add_argument("--v-depth", type=int, default=ADAPTER["v_depth"], help="visual blocks of the adapter "
                    "(the released 7B has 8 of width 768)")
    ap.add_argument("--img-bs", type=int, default=40)
    ap.add_argument("--txt-bs", type=int, default=12)
    ap.add_argument("--txt-mem", type=int, default=8, help="stage 4: scene questions per step in the instruction "
                    "data, the scene given in words as the pre-training prefix memory (0: text tasks only, "
                    "models one to seven)")
    ap.add_argument("--lr-vis", type=float, default=1.5e-3)
    ap.add_argument("--lr-late", type=float, default=2e-3)
    ap.add_argument("--lm-init", default="", help="a stage1_lm.pt to continue (its run's vocab.json must be "
                    "copied into --out first); wall time and steps add up")
    ap.add_argument("--clip-init", default="", help="a stage2_clip.pt to continue (same pool settings); "
                    "wall time and steps add up")
    ap.add_argument("--adapt-init", default="", help="a stage3_adapter.pt to continue (same LM and CLIP); "
                    "wall time and steps add up")
    ap.add_argument("--stop-after", default="", help="lm | clip: stop after that stage")
    ap.add_argument("--only", default="", help="lm | clip: run only that stage (clip includes the pool); "
                    "the two are independent, so on two cores they can run as two processes at once")
    args = ap.parse_args()
    ADAPTER["v_depth"] = args.v_depth
    CLIP["res"], CLIP["patch"] = args.clip_res, args.clip_patch
    os.makedirs(args.out, exist_ok=True)
    T0 = time.time()
    vpath = os.path.join(args.out, "vocab.json")
    if os.path.exists(vpath):
        tok = Tok(json.load(open(vpath)))
    else:
        tok = Tok()
        json.dump(tok.ids, open(vpath, "w"))
    log(f"compact vocab {len(tok.ids)} ids")
    if args.only == "clip":
        stage_clip(args, tok, stage_pool(args, args.out), args.out)
        return
    lm_st = stage_lm(args, tok, args.out)
    if args.stop_after == "lm" or args.only == "lm":
        return
    pool = stage_pool(args, args.out)
    clip_st = stage_clip(args, tok, pool, args.out)
    probe = clip_st.get("probe") or clip_probe(clip_st)  # checkpoints from before the probe existed
    if args.stop_after == "clip":
        return
    pool2 = stage_pool(args, args.out, "pool_adapt.pt", args.adapt_pool, 424242) if args.adapt_pool else None
    vit = ViT(CLIP)
    vit.load_state_dict(clip_st["sd"])
    vit.eval()
    t0 = time.time()
    feats = torch.cat([clip_feats(vit, p["imgs"]) for p in (pool, pool2) if p is not None])
    scenes = pool["scenes"] + (pool2["scenes"] if pool2 is not None else [])
    log(f"CLIP features of the pools {tuple(feats.shape)} in {time.time() - t0:.0f}s")
    vis_st = stage_visual(args, tok, lm_st, vit, feats, scenes, args.out) if args.distill_min > 0 else None
    ad_st = stage_adapt(args, tok, lm_st, vit, feats, scenes, vis_st, args.out)
    sizes = export(tok, lm_st, clip_st, ad_st, args.dst)
    n_base = sum(v.numel() for k, v in torch.load(os.path.join(args.dst, "llama", "consolidated.00.pth")).items() if k != "rope.freqs")
    n_clip = sum(v.numel() for v in torch.load(os.path.join(args.dst, "clip.pth")).values() if torch.is_tensor(v))
    n_adapter = sum(v.numel() for v in torch.load(os.path.join(args.dst, "adapter.pth"))["model"].values())
    total = n_base + n_clip + n_adapter
    summary = {
        "wall_s": {"lm": lm_st["wall_s"], "pool": pool["wall_s"], "clip": clip_st["wall_s"],
                   "adapt_pool": pool2["wall_s"] if pool2 is not None else 0,
                   "visual": vis_st["wall_s"] if vis_st else 0, "adapt": ad_st["wall_s"],
                   "this_invocation": time.time() - T0},
        "steps": {"lm": lm_st["steps"], "clip": clip_st["steps"], "visual": vis_st["steps"] if vis_st else 0,
                  "adapt": ad_st["steps"]},
        "slot_probe": {"visual": vis_st["probe"] if vis_st else None, "adapt": ad_st.get("probe")},
        "final_loss": {"lm": lm_st["final_loss"], "clip": clip_st["final_loss"], "adapt_img": ad_st["img_loss"],
                       "adapt_txt": ad_st["txt_loss"]},
        "params": {"llama_file": n_base, "clip_file": n_clip, "adapter_file": n_adapter, "total": total,
                   "trainable_stage4": ad_st["n_train"], "trainable_visual_group": ad_st["n_vis"],
                   "trainable_instruction_group": ad_st["n_late"],
                   "trainable_share": ad_st["n_train"] / total},
        "txt_mem": args.txt_mem, "clip_probe": probe, "file_bytes": sizes, "llama": LLAMA, "clip": CLIP, "adapter": ADAPTER, "compact_vocab": len(tok.ids),
    }
    summary["parity_examples"] = parity_check(args.dst, tok, ad_st, clip_st)
    json.dump(summary, open(os.path.join(args.out, "summary.json"), "w"), indent=1)
    log(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
