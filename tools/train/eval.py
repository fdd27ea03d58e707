#!/usr/bin/env python3
"""Held-out evaluation of the exported default model with the fp32 PyTorch reference
(tools/reference/model.py: the exact forward the engine implements), greedy decoding.

    python3 tools/train/eval.py

Held-out pictures (never in training: other seeds; the numpy renderer is never trained on):
  * pil   : 100 scenes, PIL renderer, seed 2024, random canvas 128..400 px, no pixel noise
  * numpy : 100 scenes, independent numpy renderer (CSS palette, other star/cross geometry,
            supersampled anti-aliasing, radial/linear gradients), seed 4048, 224 px
  * pil_noisy (torch only, not saved): 60 scenes, seed 8096, PIL renderer with pixel noise 10
  * text  : 60 text-only instructions (zero image), seed 31
Saved for the engine: www/models/default/eval/{pil,numpy}_NNN.png + questions.json.
Writes tools/train/runs/default/eval_torch.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from collections import defaultdict

import torch

torch.set_num_threads(1)
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(REPO, "tools", "reference"))
sys.dont_write_bytecode = True
import data as D  # noqa: E402
import model as ref  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--src", default=os.path.join(REPO, "www", "models", "default", "src"))
    ap.add_argument("--eval-dir", default=os.path.join(REPO, "www", "models", "default", "eval"))
    ap.add_argument("--out", default=os.path.join(HERE, "runs", "default", "eval_torch.json"))
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--n-noisy", type=int, default=60)
    ap.add_argument("--n-text", type=int, default=60)
    args = ap.parse_args()
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=os.path.join(args.src, "llama", "tokenizer.model"))
    params, llama_sd = ref.load_llama(os.path.join(args.src, "llama"))
    vis_sd = ref.load_clip(os.path.join(args.src, "clip.pth"))
    asd, acfg = ref.load_adapter(os.path.join(args.src, "adapter.pth"))
    cfg = ref.AdapterConfig.build(params, acfg)
    # input resolution = patch grid x patch size, as the converter derives it
    res = math.isqrt(vis_sd["positional_embedding"].shape[0] - 1) * vis_sd["conv1.weight"].shape[-1]
    os.makedirs(args.eval_dir, exist_ok=True)
    t0 = time.time()

    def answer(img_tensor, instrs):
        vq = ref.forward_visual(asd, cfg, ref.clip_encode_image(vis_sd, img_tensor))
        dec = ref.Decoder(cfg, llama_sd, asd, vq)
        outs = []
        for ins in instrs:
            p = [ref.BOS_ID] + sp.encode(ref.format_prompt(ins))
            gen, _, _ = ref.greedy_generate(dec, p, 48)
            outs.append(sp.decode(gen).strip())
        return outs

    stats = defaultdict(lambda: [0, 0])
    items, failures = [], []
    splits = [("pil", 2024, args.n, True), ("numpy", 4048, args.n, True), ("pil_noisy", 8096, args.n_noisy, False)]
    for split, seed, n, save in splits:
        rng = random.Random(seed)
        for i in range(n):
            sc = D.sample_scene(rng)
            if split == "numpy":
                img = D.render_numpy(sc, rng, 224)
            elif split == "pil":
                img = D.render_pil(sc, rng, size=rng.randint(128, 400), noise=0)
            else:
                img = D.render_pil(sc, rng, noise=10)
            qs = D.questions(sc, rng, all_kinds=True)
            x = torch.from_numpy(D.clip_preprocess(img, res))[None]
            got = answer(x, [q for _, q, _ in qs])
            rec = {"split": split, "scene": sc, "questions": []}
            if save:
                name = f"{split}_{i:03d}.png"
                img.save(os.path.join(args.eval_dir, name), optimize=True)
                rec["image"] = name
            for (kind, q, a), g in zip(qs, got):
                ok = g == a
                for key in (f"{split}/{kind}", f"all_images/{kind}", f"{split}/all"):
                    stats[key][0] += ok
                    stats[key][1] += 1
                if not ok and len(failures) < 40:
                    failures.append({"split": split, "i": i, "q": q, "want": a, "got": g})
                rec["questions"].append({"kind": kind, "instruction": q, "answer": a, "torch_answer": g})
            if save:
                items.append(rec)
        print(f"{split} done {time.time() - t0:.0f}s", flush=True)
    rng = random.Random(31)
    zero = torch.zeros(1, 3, res, res)  # text-only: all-zero image, not normalised (spec 4)
    tasks = [D.text_task(rng) for _ in range(args.n_text)]
    got = answer(zero, [q for _, q, _ in tasks])
    text_items = []
    for (kind, q, a), g in zip(tasks, got):
        ok = g == a
        for key in (f"text/{kind}", "text/all"):
            stats[key][0] += ok
            stats[key][1] += 1
        if not ok and len(failures) < 60:
            failures.append({"split": "text", "q": q, "want": a, "got": g})
        text_items.append({"kind": kind, "instruction": q, "answer": a, "torch_answer": g})
    acc = {k: {"acc": v[0] / v[1], "n": v[1]} for k, v in sorted(stats.items())}
    res = {"accuracy": acc, "wall_s": time.time() - t0, "failures": failures,
           "note": "exact string match of greedy output (max 48 tokens) vs the reference answer; "
                   "fp32 reference forward on the exported files (fp16 LLaMA/CLIP weights)"}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    json.dump(res, open(args.out, "w"), indent=1)
    desc = {"description": "Held-out shape-world pictures (seeds and renderers never used in training). "
                           "Prompt: Alpaca no-input template with the instruction, encoded with BOS; greedy; "
                           "exact string match after strip(). Images are fed through the CLIP preprocessing "
                           "(RGB). Text items use the all-zero unnormalised image.",
            "images": items, "text": text_items}
    json.dump(desc, open(os.path.join(args.eval_dir, "questions.json"), "w"), indent=0)
    for k, v in acc.items():
        print(f"{k:28s} {v['acc']:.3f} ({v['n']})")
    print(f"wall {res['wall_s']:.0f}s")


if __name__ == "__main__":
    main()
