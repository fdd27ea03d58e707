"""Checkpoints with defects, for the converter's error tests.

Run from the repository root after make_fixtures.py:
    python3 tools/reference/make_bad_fixtures.py
Writes tests/fixtures/tiny/bad/: adapter_unknown_key.pth (an extra key),
adapter_missing_key.pth (llama.layers.1.attention.wq.bias removed),
adapter_bad_shape.pth (visual_proj.bias with the wrong length);
clip_heads3.pth (our `vision_heads` extension set to 3, which does not divide
the width 64), clip_heads32.pth (head dim 2, which the attention kernel cannot
take) and clip_heads2.pth (a valid `vision_heads` of 2).
"""
import os
import torch

src = "tests/fixtures/tiny/adapter_bias.pth"
out = "tests/fixtures/tiny/bad"
os.makedirs(out, exist_ok=True)
ckpt = torch.load(src, map_location="cpu")

extra = {"model": dict(ckpt["model"]), "config": dict(ckpt["config"])}
extra["model"]["llama.layers.0.attention.mystery.weight"] = torch.zeros(4, 4)
torch.save(extra, f"{out}/adapter_unknown_key.pth")

missing = {"model": dict(ckpt["model"]), "config": dict(ckpt["config"])}
del missing["model"]["llama.layers.1.attention.wq.bias"]
torch.save(missing, f"{out}/adapter_missing_key.pth")

shape = {"model": dict(ckpt["model"]), "config": dict(ckpt["config"])}
shape["model"]["visual_proj.bias"] = torch.zeros(7)
torch.save(shape, f"{out}/adapter_bad_shape.pth")
clip = torch.load("tests/fixtures/tiny/clip.pth", map_location="cpu")
for heads in (3, 2, 32):
    torch.save(dict(clip, vision_heads=heads), f"{out}/clip_heads{heads}.pth")
print("wrote", sorted(os.listdir(out)))
