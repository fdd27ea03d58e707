"""The tiny CLIP fixture as a TorchScript archive, like OpenAI's released
`ViT-L-14.pt` (a scripted/traced module, not a state dict).

Run from the repository root after make_fixtures.py:
    python3 tools/reference/make_torchscript_fixture.py
Writes tests/fixtures/tiny/clip_torchscript.pt with OpenAI's attribute names
(visual.conv1, visual.transformer.resblocks.N.attn.in_proj_weight, ...) and a
small text tower that the converter must skip.
"""
from collections import OrderedDict

import torch
from torch import nn

FIX = "tests/fixtures/tiny"
sd = torch.load(f"{FIX}/clip.pth", map_location="cpu")
v = {k[len("visual."):]: t for k, t in sd.items() if isinstance(t, torch.Tensor) and k.startswith("visual.")}
width = v["conv1.weight"].shape[0]
patch = v["conv1.weight"].shape[2]


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, max(1, width // 64))
        self.ln_1 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(width, 4 * width)), ("gelu", nn.GELU()), ("c_proj", nn.Linear(4 * width, width))]))
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x), self.ln_1(x), self.ln_1(x), need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, layers):
        super().__init__()
        self.resblocks = nn.Sequential(*[Block() for _ in range(layers)])

    def forward(self, x):
        return self.resblocks(x)


class Visual(nn.Module):
    def __init__(self, layers):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, patch, patch, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(width))
        self.positional_embedding = nn.Parameter(torch.zeros(v["positional_embedding"].shape))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(layers)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(torch.zeros(v["proj"].shape))

    def forward(self, x):
        x = self.conv1(x).flatten(2).permute(2, 0, 1)
        return self.ln_post(self.transformer(self.ln_pre(x))) @ self.proj


class Clip(nn.Module):
    def __init__(self, layers):
        super().__init__()
        self.visual = Visual(layers)
        self.token_embedding = nn.Embedding(16, 8)  # a text-tower stand-in the converter skips
        self.logit_scale = nn.Parameter(torch.ones([]))

    def forward(self, x):
        return self.visual(x)


layers = len({k.split(".")[2] for k in v if k.startswith("transformer.resblocks.")})
model = Clip(layers)
state = {f"visual.{k}": t.float() for k, t in v.items()}
missing, unexpected = model.load_state_dict(state, strict=False)
assert not unexpected and all(not k.startswith("visual.") for k in missing), (missing, unexpected)
scripted = torch.jit.script(model.eval())
scripted.save(f"{FIX}/clip_torchscript.pt")
print("wrote", f"{FIX}/clip_torchscript.pt")
