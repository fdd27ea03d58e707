"""Shape world for the default LLaMA-Adapter V2 demo model.

Scenes: 1-4 shapes of distinct types (circle, square, triangle, star, hexagon, cross) in
named colours (red, orange, yellow, green, blue, purple) with random shades, sizes,
positions, rotations, backgrounds (flat / tinted / gradient) and pixel noise.

Two independent renderers:
  * render_pil   : PIL ImageDraw polygons (training + held-out test split)
  * render_numpy : numpy supersampled rasteriser with different geometry, a CSS-like colour
                   palette and gradient backgrounds (evaluation only: never used in training)

Text: captions (shapes listed left to right), Q/A (colour, count, presence, left/right),
text-only instructions (arithmetic, word tasks) and the plain-text LM pre-training corpus.
All prompts use the Alpaca no-input template of the spec (section 4).
"""

from __future__ import annotations

import colorsys
import math
import random

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ["circle", "square", "triangle", "star", "hexagon", "cross"]
COLOURS = ["red", "orange", "yellow", "green", "blue", "purple"]
NUM_WORDS = ["Zero", "One", "Two", "Three", "Four"]
# hue centre (degrees), hue jitter, min value
HUES = {"red": (0, 8, 0.5), "orange": (28, 5, 0.7), "yellow": (55, 5, 0.75),
        "green": (122, 22, 0.4), "blue": (222, 14, 0.45), "purple": (282, 14, 0.4)}

ALPACA = ("Below is an instruction that describes a task. Write a response that appropriately "
          "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:")

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)


def format_prompt(instruction: str) -> str:
    return ALPACA.format(instruction=instruction)


# ----------------------------------------------------------------------------- scenes


def sample_scene(rng: random.Random, n: int | None = None) -> dict:
    """Shapes in unit coordinates (x, y, r, rot), distinct types, non-overlapping,
    x-centres at least 0.07 apart so left/right is well defined. Sorted left to right."""
    n = n or rng.randint(1, 4)
    for _ in range(100):
        types = rng.sample(SHAPES, n)
        r_lo, r_hi = (0.06, 0.16) if n <= 2 else (0.055, 0.13)
        objs = []
        ok = True
        for t in types:
            for _ in range(60):
                r = rng.uniform(r_lo, r_hi)
                x, y = rng.uniform(r + 0.02, 0.98 - r), rng.uniform(r + 0.02, 0.98 - r)
                if all(math.hypot(x - o["x"], y - o["y"]) > r + o["r"] + 0.02 and abs(x - o["x"]) > 0.07
                       for o in objs):
                    objs.append(dict(shape=t, colour=rng.choice(COLOURS), x=x, y=y, r=r,
                                     rot=rng.uniform(0, 360)))
                    break
            else:
                ok = False
                break
        if ok:
            objs.sort(key=lambda o: o["x"])
            return {"objects": objs}
    raise RuntimeError("scene sampling failed")


def shade(rng: random.Random, name: str):
    h, dh, vmin = HUES[name]
    hh = ((h + rng.uniform(-dh, dh)) % 360) / 360
    s = rng.uniform(0.65, 1.0)
    v = rng.uniform(vmin, 1.0)
    return tuple(int(round(c * 255)) for c in colorsys.hsv_to_rgb(hh, s, v))


def background(rng: random.Random, fg_cols):
    for _ in range(50):
        h, s, v = rng.random(), rng.uniform(0, 0.18), rng.uniform(0.05, 0.97)
        bg = tuple(int(round(c * 255)) for c in colorsys.hsv_to_rgb(h, s, v))
        if all(sum((a - b) ** 2 for a, b in zip(bg, c)) ** 0.5 > 90 for c in fg_cols):
            return bg
    return (128, 128, 128)


def polygon(shape: str, x, y, r, rot, star_inner=0.45, cross_w=0.36, sides_from_shape=None):
    a0 = math.radians(rot)
    if shape == "square":
        k, rad = 4, [r] * 4
    elif shape == "triangle":
        k, rad = 3, [r] * 3
    elif shape == "hexagon":
        k, rad = 6, [r] * 6
    elif shape == "star":
        k, rad = 10, [r if i % 2 == 0 else r * star_inner for i in range(10)]
    elif shape == "cross":
        w = cross_w * r
        pts = [(w, r), (w, w), (r, w), (r, -w), (w, -w), (w, -r), (-w, -r), (-w, -w), (-r, -w), (-r, w), (-w, w), (-w, r)]
        ca, sa = math.cos(a0), math.sin(a0)
        return [(x + px * ca - py * sa, y + px * sa + py * ca) for px, py in pts]
    else:
        raise ValueError(shape)
    return [(x + rad[i] * math.cos(a0 + 2 * math.pi * i / k), y + rad[i] * math.sin(a0 + 2 * math.pi * i / k))
            for i in range(k)]


def geometry(o: dict) -> dict:
    """The object's own star / cross proportions, where `jitter_geometry` set them (else the
    polygon defaults: star inner radius 0.45 r, cross arm half-width 0.36 r)."""
    return {k: o[k] for k in ("star_inner", "cross_w") if k in o}


def jitter_geometry(scene: dict, rng: random.Random) -> dict:
    """Training augmentation (`train.py --geo-jitter`): each star and cross gets its own
    proportions, so that the vision tower does not learn one drawing of them. Ranges are broad
    on purpose (other programs draw these shapes differently), not fitted to any test renderer."""
    for o in scene["objects"]:
        if o["shape"] == "star":
            o["star_inner"] = rng.uniform(0.3, 0.6)
        elif o["shape"] == "cross":
            o["cross_w"] = rng.uniform(0.2, 0.5)
    return scene


def render_pil(scene: dict, rng: random.Random, size: int | None = None, noise: float | None = None) -> Image.Image:
    """Square canvas of random size; shade, background, gradient and noise sampled from rng."""
    S = size or rng.choice([224, 224, rng.randint(128, 480)])
    cols = [shade(rng, o["colour"]) for o in scene["objects"]]
    bg = background(rng, cols)
    img = Image.new("RGB", (S, S), bg)
    if rng.random() < 0.3:  # linear gradient background
        bg2 = background(rng, cols)
        g = np.linspace(0, 1, S, dtype=np.float32)[:, None, None]
        arr = (1 - g) * np.array(bg, np.float32) + g * np.array(bg2, np.float32)
        arr = np.broadcast_to(arr, (S, S, 3))
        if rng.random() < 0.5:
            arr = arr.transpose(1, 0, 2)
        img = Image.fromarray(np.ascontiguousarray(arr).astype(np.uint8))
    d = ImageDraw.Draw(img)
    for o, c in zip(scene["objects"], cols):
        x, y, r = o["x"] * S, o["y"] * S, o["r"] * S
        if o["shape"] == "circle":
            d.ellipse([x - r, y - r, x + r, y + r], fill=c)
        else:
            d.polygon(polygon(o["shape"], x, y, r, o["rot"], **geometry(o)), fill=c)
    nz = rng.choice([0, 0, 4, 8, 14]) if noise is None else noise
    if nz > 0:
        arr = np.asarray(img, dtype=np.float32)
        arr = arr + np.random.default_rng(rng.getrandbits(32)).normal(0, nz, arr.shape)
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    return img


# CSS-like palette for the independent renderer (names -> our colour words)
CSS = {"red": ["#ff0000", "#dc143c", "#b22222", "#e53935", "#ff3b30"],
       "orange": ["#ffa500", "#ff8c00", "#ff7f27", "#f57c00"],
       "yellow": ["#ffff00", "#ffd700", "#f5e050", "#ffeb3b"],
       "green": ["#008000", "#32cd32", "#228b22", "#2e7d32", "#00c853"],
       "blue": ["#0000ff", "#1e90ff", "#4169e1", "#1565c0", "#0047ab"],
       "purple": ["#800080", "#8e24aa", "#9932cc", "#6a1b9a", "#a020f0"]}


def _hex(h):
    return tuple(int(h[i:i + 2], 16) for i in (1, 3, 5))


def _inside_poly(px, py, poly):
    """Even-odd crossing test, vectorised over pixel arrays."""
    inside = np.zeros(px.shape, bool)
    n = len(poly)
    for i in range(n):
        x1, y1 = poly[i]
        x2, y2 = poly[(i + 1) % n]
        cond = (y1 > py) != (y2 > py)
        with np.errstate(divide="ignore", invalid="ignore"):
            xi = (x2 - x1) * (py - y1) / (y2 - y1 + 1e-12) + x1
        inside ^= cond & (px < xi)
    return inside


def render_numpy(scene: dict, rng: random.Random, size: int = 224) -> Image.Image:
    """Independent renderer: 3x supersampled coverage, CSS palette, star inner ratio 0.38,
    thinner cross, radial/linear gradient backgrounds. Never used for training."""
    S, ss = size, 3
    g = (np.arange(S * ss, dtype=np.float32) + 0.5) / ss
    py, px = np.meshgrid(g, g, indexing="ij")
    cols = [_hex(rng.choice(CSS[o["colour"]])) for o in scene["objects"]]
    bg1, bg2 = background(rng, cols), background(rng, cols)
    t = np.hypot(px - S / 2, py - S / 2) / (S * 0.71) if rng.random() < 0.5 else px / S
    img = (1 - t[..., None]) * np.array(bg1, np.float32) + t[..., None] * np.array(bg2, np.float32)
    for o, c in zip(scene["objects"], cols):
        x, y, r = o["x"] * S, o["y"] * S, o["r"] * S
        if o["shape"] == "circle":
            m = np.hypot(px - x, py - y) <= r
        else:
            m = _inside_poly(px, py, polygon(o["shape"], x, y, r, o["rot"], star_inner=0.38, cross_w=0.3))
        img[m] = np.array(c, np.float32)
    img = img.reshape(S, ss, S, ss, 3).mean(axis=(1, 3))
    return Image.fromarray(np.clip(np.round(img), 0, 255).astype(np.uint8))


# ----------------------------------------------------------------------------- preprocessing


def clip_preprocess(img: Image.Image, res: int = 224) -> np.ndarray:
    """Spec section 4 (RGB order): bicubic short side -> res, centre crop, /255, mean/std."""
    img = img.convert("RGB")
    w, h = img.size
    if w < h:
        nw, nh = res, int(res * h / w)
    else:
        nw, nh = int(res * w / h), res
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), Image.BICUBIC)
    left, top = int(round((nw - res) / 2)), int(round((nh - res) / 2))
    img = img.crop((left, top, left + res, top + res))
    a = np.asarray(img, dtype=np.float32) / 255.0
    a = (a - CLIP_MEAN) / CLIP_STD
    return a.transpose(2, 0, 1).copy()


# ----------------------------------------------------------------------------- text


def _a(word: str) -> str:
    """'a word' or 'an word' by the first letter (the colour and shape names need nothing subtler)."""
    return ("an " if word[0] in "aeiou" else "a ") + word


def _item(o, article="a"):
    return _a(f"{o['colour']} {o['shape']}") if article == "a" else f"{article} {o['colour']} {o['shape']}"


def _join(items):
    """'A x, a y and a z.': the items listed, capitalised, with a full stop."""
    s = items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
    return s[0].upper() + s[1:] + "."


def _n_shapes(n: int) -> str:
    return f"{NUM_WORDS[n].lower()} shape{'' if n == 1 else 's'}"


def caption(scene: dict) -> str:
    return _join([_item(o) for o in scene["objects"]])


def caption_view(scene: dict, view: str) -> str:
    """One of several texts that describe a scene, for contrastive pre-training (like the varied
    alt-texts CLIP learns from). Views that leave out the colours make the shapes themselves
    matter; views that leave out the shapes make the colours matter.
      full    : the caption ("A red circle and a blue triangle.")
      shapes  : "A circle and a triangle."          colours : "A red shape and a blue shape."
      count   : "Two shapes."                       one     : "A blue triangle." (the first shape)"""
    objs = scene["objects"]
    if view == "full":
        return caption(scene)
    if view == "shapes":
        return _join([_a(o["shape"]) for o in objs])
    if view == "colours":
        return _join([_a(o["colour"]) + " shape" for o in objs])
    if view == "count":
        return _join([_n_shapes(len(objs))])
    if view == "one":
        return _join([_item(objs[0])])
    raise ValueError(view)


VIEWS = ["full", "shapes", "colours", "count", "one"]
VIEW_W = [0.4, 0.25, 0.15, 0.1, 0.1]


def hard_negative(scene: dict, rng: random.Random) -> dict:
    """A scene that differs from `scene` in one detail (a colour, a shape type, one shape more or
    less, or the order of two neighbours): its caption is a hard negative for contrastive training."""
    objs = [dict(o) for o in scene["objects"]]
    kinds = ["colour", "shape"] + (["drop", "swap"] if len(objs) > 1 else []) + (["add"] if len(objs) < 4 else [])
    kind = rng.choice(kinds)
    i = rng.randrange(len(objs))
    if kind == "colour":
        objs[i]["colour"] = rng.choice([c for c in COLOURS if c != objs[i]["colour"]])
    elif kind == "shape":
        objs[i]["shape"] = rng.choice([t for t in SHAPES if t not in {o["shape"] for o in objs}])
    elif kind == "drop":
        objs.pop(i)
    elif kind == "swap":
        j = i + 1 if i + 1 < len(objs) else i - 1
        objs[i], objs[j] = objs[j], objs[i]
    else:
        new = dict(shape=rng.choice([t for t in SHAPES if t not in {o["shape"] for o in objs}]),
                   colour=rng.choice(COLOURS))
        objs.insert(rng.randrange(len(objs) + 1), new)
    return {"objects": objs}


def questions(scene: dict, rng: random.Random, all_kinds: bool = False):
    """List of (kind, instruction, answer). all_kinds: one of every applicable question."""
    objs = scene["objects"]
    out = [("caption", "Describe this image.", caption(scene))]
    o = rng.choice(objs)
    cw = "colour" if (all_kinds or rng.random() < 0.8) else "color"
    out.append(("colour", f"What {cw} is the {o['shape']}?", o["colour"].capitalize() + "."))
    out.append(("count", "How many shapes are there?", NUM_WORDS[len(objs)] + "."))
    present = {p["shape"] for p in objs}
    if rng.random() < 0.5:
        s = rng.choice(sorted(present))
    else:
        s = rng.choice([t for t in SHAPES if t not in present])
    out.append(("presence", f"Is there a {s}?", "Yes." if s in present else "No."))
    if len(objs) >= 2:
        i = rng.randrange(len(objs))
        if (rng.random() < 0.5 and i > 0) or i == len(objs) - 1:
            out.append(("leftright", f"Which shape is left of the {objs[i]['shape']}?",
                        "The " + _item(objs[i - 1], "")[1:] + "."))
        else:
            out.append(("leftright", f"Which shape is right of the {objs[i]['shape']}?",
                        "The " + _item(objs[i + 1], "")[1:] + "."))
    return out


OPPOSITES = [("hot", "cold"), ("big", "small"), ("up", "down"), ("day", "night"), ("fast", "slow"),
             ("happy", "sad"), ("open", "closed"), ("light", "dark"), ("old", "new"), ("left", "right"),
             ("good", "bad"), ("high", "low"), ("early", "late"), ("wet", "dry"), ("full", "empty"),
             ("in", "out"), ("yes", "no"), ("black", "white"), ("long", "short"), ("hard", "soft")]
PLURALS = [("cat", "cats"), ("dog", "dogs"), ("box", "boxes"), ("child", "children"), ("mouse", "mice"),
           ("foot", "feet"), ("circle", "circles"), ("star", "stars"), ("tree", "trees"), ("bus", "buses"),
           ("man", "men"), ("woman", "women"), ("tooth", "teeth"), ("city", "cities"), ("book", "books"),
           ("baby", "babies"), ("leaf", "leaves"), ("apple", "apples"), ("square", "squares"), ("house", "houses")]
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
WORDS = ["apple", "river", "green", "table", "music", "cloud", "stone", "light", "paper", "horse",
         "garden", "window", "orange", "planet", "circle", "yellow", "bread", "water", "house", "smile"]


def text_task(rng: random.Random, kinds=None):
    """(kind, instruction, answer) of a text-only instruction."""
    kind = rng.choice(kinds or ["plus", "minus", "opposite", "plural", "day", "repeat"])
    if kind == "plus":
        a, b = rng.randint(0, 12), rng.randint(0, 12)
        return kind, f"What is {a} plus {b}?", f"{a + b}."
    if kind == "minus":
        a = rng.randint(0, 20)
        b = rng.randint(0, a)
        return kind, f"What is {a} minus {b}?", f"{a - b}."
    if kind == "opposite":
        a, b = rng.choice(OPPOSITES)
        if rng.random() < 0.5:
            a, b = b, a
        return kind, f"What is the opposite of {a}?", b.capitalize() + "."
    if kind == "plural":
        a, b = rng.choice(PLURALS)
        return kind, f"What is the plural of {a}?", b.capitalize() + "."
    if kind == "day":
        i = rng.randrange(7)
        return kind, f"What day comes after {DAYS[i]}?", DAYS[(i + 1) % 7] + "."
    w = rng.choice(WORDS)
    return "repeat", f"Repeat the word {w}.", w.capitalize() + "."


def scene_text(sc: dict, rng: random.Random) -> str:
    """A plain description of a scene: caption, count, each shape's colour, left/right pairs."""
    objs = sc["objects"]
    parts = [caption(sc)]
    parts.append(f"There {'is' if len(objs) == 1 else 'are'} {_n_shapes(len(objs))}.")
    for o in rng.sample(objs, len(objs)):
        parts.append(f"The {o['shape']} is {o['colour']}.")
    for a, b in zip(objs, objs[1:]):
        parts.append(f"The {a['colour']} {a['shape']} is left of the {b['colour']} {b['shape']}.")
    return " ".join(parts)


def plain_sentence(rng: random.Random) -> str:
    """Plain-text LM corpus sentences (world knowledge, no template)."""
    k = rng.random()
    if k < 0.35:
        return scene_text(sample_scene(rng), rng)
    kind, q, a = text_task(rng)
    a = a[:-1]
    if kind == "plus":
        return q[8:-1] + " is " + a + "."
    if kind == "minus":
        return q[8:-1] + " is " + a + "."
    if kind == "opposite":
        return "The opposite of " + q[24:-1] + " is " + a.lower() + "."
    if kind == "plural":
        return "The plural of " + q[22:-1] + " is " + a.lower() + "."
    if kind == "day":
        return a + " comes after " + q[20:-1] + "."
    return f"The word {a.lower()}. {a}."


ORDINALS = ["first", "second", "third", "fourth"]
MEMORY = 0.8  # share of LM-corpus image questions that come with the scene as a prefix memory


def memory_words(scene: dict):
    """The scene as prefix-memory slots for LM pre-training: one slot per shape, left to right,
    each the words (colour, shape, ordinal) whose token embeddings are summed into one vector."""
    return [(o["colour"], o["shape"], ORDINALS[i]) for i, o in enumerate(scene["objects"])]


def lm_example(rng: random.Random):
    """One LM pre-training document: (prompt_text_or_None, response_or_text, scene_or_None).
    Mix: plain sentences; templated image questions, most of them with their scene given as a
    prefix memory (see train.py: the LM learns to read an unpositioned prefix in its first
    layers, the path the gated visual prefix takes later), the rest without (format and prior);
    templated text tasks for plus/opposite/plural only (minus/day/repeat are left for instruction
    tuning to transfer from plain text)."""
    k = rng.random()
    if k < 0.25:
        return None, plain_sentence(rng), None
    if k < 0.85:  # reading the memory is the slowest skill to learn, so it gets most documents
        sc = sample_scene(rng)
        kind, q, a = rng.choice(questions(sc, rng))
        return format_prompt(q), " " + a, (sc if rng.random() < MEMORY else None)
    kind, q, a = text_task(rng, ["plus", "opposite", "plural"])
    return format_prompt(q), " " + a, None
