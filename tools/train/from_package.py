"""Rebuild training checkpoints from a converted base package (www/models/default/base).

Stages 1 (LM) and 2 (CLIP vision tower) are frozen in stage 4, and the base package stores both
exactly as training exported them (fp16 rounding aside), so a new session can continue from the
shipped model instead of spending 100 minutes retraining the LM:

    python3 tools/train/from_package.py --out DIR            # writes DIR/vocab.json,
                                                             # DIR/stage1_lm.pt, DIR/clip_visual.pt

`stage1_lm.pt` is picked up by train.py as the finished stage 1. `clip_visual.pt` holds only the
vision tower (the contrastive text tower is not exported); pass it to `train.py --clip-init`,
which then trains a fresh text tower against the frozen ViT first (`--clip-txt-warm` steps).

Recorded steps / wall time / final loss of the recovered stages are those of the run that made
the package (tools/train/README.md); pass them with --lm-steps etc. if another package is used.
"""
import argparse
import json
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import train as T  # noqa: E402


def read_package(pkg):
    """{name: float32 tensor} of a package directory (manifest.json + shard-*.bin)."""
    man = json.load(open(os.path.join(pkg, "manifest.json")))
    shards = [open(os.path.join(pkg, s["file"]), "rb").read() for s in man["shards"]]
    out = {}
    for t in man["tensors"]:
        dt = {"f16": np.float16, "f32": np.float32}.get(t["format"])
        if dt is None:
            sys.exit(f"{pkg}: tensor {t['name']} is stored as {t['format']}; only f16/f32 packages can be read back")
        rows = []
        for p in sorted(t["pieces"], key=lambda p: p["row_start"]):
            rows.append(np.frombuffer(shards[p["shard"]], dt, p["length"] // np.dtype(dt).itemsize, p["offset"]))
        out[t["name"]] = torch.from_numpy(np.concatenate(rows).astype(np.float32).reshape(t["shape"]))
    return man, out


def lm_state(tok, w):
    """The training module's LLaMA state dict (compact vocab) from the base tensors."""
    gid = torch.tensor(tok.ids)
    unused = sorted(set(range(T.VOCAB)) - set(tok.ids))
    out_rows = w["output.weight"][unused]
    if (out_rows - out_rows[0]).abs().max() > 0:
        sys.exit("output.weight rows of unused ids differ: this package was not exported by train.py")
    sd = {"tok": w["tok_embeddings.weight"][gid], "out": w["output.weight"][gid], "unused": out_rows[0],
          "norm": w["norm.weight"]}
    for l in range(T.LLAMA["n_layers"]):
        for n in T.LLaMA.LIN:
            sd[f"W.{l}_{n}"] = w[f"layers.{l}.{T.meta_group(n)}.{n}.weight"]
        sd[f"W.{l}_an"] = w[f"layers.{l}.attention_norm.weight"]
        sd[f"W.{l}_fn"] = w[f"layers.{l}.ffn_norm.weight"]
    return sd


def load_vit(vit, w):
    """The base package's clip.* tensors into a training ViT (the package stores proj transposed)."""
    sd = {k[len("clip."):]: v for k, v in w.items() if k.startswith("clip.")}
    sd["proj"] = sd.pop("proj_t").t()
    vit.load_state_dict_openai(sd)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--package", default=os.path.join(T.REPO, "www", "models", "default", "base"))
    ap.add_argument("--out", required=True)
    # the shipped seventh model's stage records (tools/train/README.md, "Wall time")
    ap.add_argument("--lm-steps", type=int, default=13474)
    ap.add_argument("--lm-wall", type=float, default=6792)
    ap.add_argument("--lm-loss", type=float, default=0.286)
    ap.add_argument("--clip-steps", type=int, default=23514)
    ap.add_argument("--clip-wall", type=float, default=9572)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    man, w = read_package(args.package)
    clip_cfg = man["config"]["clip"]
    if clip_cfg["heads"] != T.CLIP["heads"] or clip_cfg["width"] != T.CLIP["width"]:
        sys.exit(f"package CLIP {clip_cfg} does not match train.py's {T.CLIP}")
    # input size and patch come from the package (64 / 8 up to the sixth model, 128 / 16 after)
    T.CLIP["res"], T.CLIP["patch"] = clip_cfg["image_size"], clip_cfg["patch"]
    vpath = os.path.join(args.out, "vocab.json")
    tok = T.Tok(json.load(open(vpath))) if os.path.exists(vpath) else T.Tok()
    json.dump(tok.ids, open(vpath, "w"))
    lm = T.LLaMA(len(tok.ids), T.LLAMA)
    lm.load_state_dict(lm_state(tok, w))
    vit = T.ViT(T.CLIP)
    load_vit(vit, w)
    src = os.path.abspath(args.package)
    torch.save({"sd": lm.state_dict(), "steps": args.lm_steps, "wall_s": args.lm_wall, "final_loss": args.lm_loss,
                "recovered_from": src}, os.path.join(args.out, "stage1_lm.pt"))
    torch.save({"sd": vit.state_dict(), "heads": T.CLIP["heads"], "steps": args.clip_steps, "wall_s": args.clip_wall,
                "recovered_from": src}, os.path.join(args.out, "clip_visual.pt"))
    T.log(f"wrote {args.out}/stage1_lm.pt and clip_visual.pt from {src} ({len(tok.ids)} compact ids)")


if __name__ == "__main__":
    main()
