#!/usr/bin/env python3
"""Writes the fuzz seeds: fuzz/seeds/<target>/*. Small real files from the
fixtures, and tiny PyTorch / safetensors files made here with the standard
library alone (torch.save's zip layout and pickle records, TorchScript's
module tree, safetensors' header), so that each target starts from inputs
the reader accepts. Run from the repository root; then fuzz with
fuzz/seeds/<target> as a second corpus folder, and minimise into
fuzz/corpus/<target> (docs/ROBUSTNESS.md)."""
import collections, copyreg, io, json, os, pickle, shutil, struct, subprocess, sys, types, zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "fuzz", "seeds")

def out(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)

def copy(target, path, name=None):
    with open(os.path.join(ROOT, path), "rb") as f:
        out(target, name or os.path.basename(path), f.read())

# ---- a fake `torch` module, enough for pickle to write torch.save's records ----
torch = types.ModuleType("torch"); sys.modules["torch"] = torch
utils = types.ModuleType("torch._utils"); sys.modules["torch._utils"] = utils; torch._utils = utils
STORAGES = {}
for name, fmt in [("FloatStorage", "f"), ("HalfStorage", "e"), ("BFloat16Storage", None), ("DoubleStorage", "d"), ("LongStorage", "q"), ("IntStorage", "i"), ("ByteStorage", "B"), ("BoolStorage", "?")]:
    cls = type(name, (), {}); cls.__module__ = "torch"; setattr(torch, name, cls); STORAGES[name] = (cls, fmt)
def _rebuild_tensor_v2(*a): pass
def _rebuild_parameter(*a): pass
_rebuild_tensor_v2.__module__ = "torch._utils"; utils._rebuild_tensor_v2 = _rebuild_tensor_v2
_rebuild_parameter.__module__ = "torch._utils"; utils._rebuild_parameter = _rebuild_parameter

class Storage:
    def __init__(self, key, stype, data):
        self.key, self.stype, self.data = key, stype, data

class Tensor:
    def __init__(self, storage, shape, stride=None, offset=0, param=False):
        self.storage, self.shape, self.offset, self.param = storage, tuple(shape), offset, param
        if stride is None:
            stride, acc = [], 1
            for d in reversed(shape):
                stride.insert(0, acc); acc *= d
        self.stride = tuple(stride)
    def __reduce_ex__(self, proto):
        t = (_rebuild_tensor_v2, (self.storage, self.offset, self.shape, self.stride, False, collections.OrderedDict()))
        if self.param:
            return (_rebuild_parameter, (TensorOnly(self), False, collections.OrderedDict()))
        return t

class TensorOnly:
    def __init__(self, t): self.t = t
    def __reduce_ex__(self, proto):
        t = self.t
        return (_rebuild_tensor_v2, (t.storage, t.offset, t.shape, t.stride, False, collections.OrderedDict()))

class Pickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, Storage):
            cls, fmt = STORAGES[obj.stype]
            numel = len(obj.data) // {"f": 4, "e": 2, None: 2, "d": 8, "q": 8, "i": 4, "B": 1, "?": 1}[fmt]
            return ("storage", cls, obj.key, "cpu", numel)
        return None

def values(stype, xs):
    fmt = STORAGES[stype][1]
    if fmt is None:  # bf16: the high half of f32
        return b"".join(struct.pack("<f", x)[2:] for x in xs)
    return struct.pack("<%d%s" % (len(xs), fmt), *xs)

def torch_save(obj, storages, folder="archive", protocol=2, extra=()):
    buf = io.BytesIO()
    Pickler(buf, protocol=protocol).dump(obj)
    z = io.BytesIO()
    with zipfile.ZipFile(z, "w", zipfile.ZIP_STORED) as f:
        f.writestr(folder + "/data.pkl", buf.getvalue())
        f.writestr(folder + "/byteorder", "little")
        for name, data in extra:
            f.writestr(folder + "/" + name, data)
        for s in storages:
            f.writestr(folder + "/data/" + s.key, s.data)
        f.writestr(folder + "/version", "3\n")
    return z.getvalue()

def state_dict():
    s0 = Storage("0", "FloatStorage", values("FloatStorage", [0.5, -1.0, 2.0, 3.25, 0.0, 1e-3]))
    s1 = Storage("1", "HalfStorage", values("HalfStorage", [1.0, 2.0, 3.0, 4.0]))
    s2 = Storage("2", "BFloat16Storage", values("BFloat16Storage", [1.0, -2.0]))
    s3 = Storage("3", "LongStorage", values("LongStorage", [7, 8, 9]))
    d = collections.OrderedDict()
    d["layers.0.attention.wq.weight"] = Tensor(s0, [2, 3])
    d["layers.0.attention.wq.bias"] = Tensor(s0, [2], offset=4)
    d["norm.weight"] = Tensor(s1, [4], param=True)
    d["gate"] = Tensor(s2, [1, 2])
    d["count"] = Tensor(s3, [3])
    return d, [s0, s1, s2, s3]

d, st = state_dict()
out("checkpoint", "state_dict_p2.pth", torch_save(d, st))
out("checkpoint", "state_dict_p4.pth", torch_save(d, st, protocol=4))
out("checkpoint", "adapter_model_config.pth", torch_save({"model": d, "config": {"w_bias": True, "query_len": 10, "eps": 1e-6, "name": "x"}}, st, folder="adapter"))

# TorchScript's layout: archive/data.pkl holds the module tree (objects
# built with NEWOBJ + BUILD), with constants.pkl and code/ beside it.
for pkg in ["__torch__", "__torch__.torch", "__torch__.torch.nn", "__torch__.torch.nn.modules"]:
    sys.modules[pkg] = types.ModuleType(pkg)
class Module:
    pass
Module.__module__ = "__torch__.torch.nn.modules.linear"; Module.__qualname__ = "Linear"
sys.modules["__torch__.torch.nn.modules.linear"] = types.ModuleType("x"); sys.modules["__torch__.torch.nn.modules.linear"].Linear = Module
class Model:
    pass
Model.__module__ = "__torch__.model"; Model.__qualname__ = "VisionTransformer"
sys.modules["__torch__.model"] = types.ModuleType("y"); sys.modules["__torch__.model"].VisionTransformer = Model
s0 = Storage("0", "FloatStorage", values("FloatStorage", [float(i) for i in range(12)]))
lin = Module(); lin.__dict__.update({"training": False, "weight": Tensor(s0, [3, 2]), "bias": Tensor(s0, [2], offset=6)})
root = Model(); root.__dict__.update({"training": False, "conv1": lin, "class_embedding": Tensor(s0, [4], offset=8), "vision_heads": 2})
constants = io.BytesIO(); pickle.dump((), constants, protocol=2)
out("checkpoint", "torchscript.pt", torch_save(root, [s0], folder="archive", extra=[("constants.pkl", constants.getvalue()), ("code/__torch__/model.py", b"class VisionTransformer(Module):\n  pass\n")]))

# The fixtures, with their storages emptied (the pickles are kept whole).
for path in ["tests/fixtures/tiny/adapter_bias.pth", "tests/fixtures/tiny/clip_torchscript.pt", "tests/fixtures/tiny/bad/clip_heads2.pth"]:
    src = zipfile.ZipFile(os.path.join(ROOT, path))
    z = io.BytesIO()
    with zipfile.ZipFile(z, "w", zipfile.ZIP_STORED) as f:
        for info in src.infolist():
            data = src.read(info)
            if "/data/" in info.filename:
                data = data[:8]
            f.writestr(info.filename, data)
    out("checkpoint", os.path.basename(path) + ".emptied", z.getvalue())

# ---- safetensors ----
def safetensors(tensors, meta=None):
    header, data = {}, b""
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    if meta:
        header["__metadata__"] = meta
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data
out("safetensors", "small.safetensors", safetensors({
    "model.embed_tokens.weight": ("F32", [2, 3], values("FloatStorage", [1, 2, 3, 4, 5, 6])),
    "model.norm.weight": ("F16", [3], values("HalfStorage", [1, 1, 1])),
    "lm_head.weight": ("BF16", [1, 2], values("BFloat16Storage", [0.5, 0.25])),
    "model.layers.0.self_attn.rotary_emb.inv_freq": ("I64", [2], values("LongStorage", [1, 2])),
}, {"format": "pt"}))
out("safetensors", "empty.safetensors", safetensors({}))

# ---- the rest: real files ----
copy("sentencepiece", "tests/fixtures/tiny/llama/tokenizer.model", "tiny.model")
copy("sentencepiece", "tests/fixtures/llama-tokenizer.model", "llama.model")
copy("tokenizer_json", "www/models/default/base/tokenizer.json", "llama.json")
sys.path.insert(0, ROOT)
for p in ["tests/fixtures/images/noise_37x23.png", "tests/fixtures/images/photo_120x80.png", "tests/fixtures/images/franz-kafka.jpg", "www/models/default/examples/shapes-1.png"]:
    copy("image", p)
copy("manifest", "www/models/default/base/manifest.json", "default_base.json")
copy("manifest", "www/models/default/adapter/manifest.json", "default_adapter.json")

# ---- small SentencePiece models, written as protobuf by hand ----
def varint(n):
    b = b""
    while True:
        x = n & 0x7F; n >>= 7
        if n:
            b += bytes([x | 0x80])
        else:
            return b + bytes([x])
def field(num, wire, payload):
    key = varint(num << 3 | wire)
    if wire == 0:
        return key + varint(payload)
    if wire == 2:
        return key + varint(len(payload)) + payload
    if wire == 5:
        return key + payload
def sp_model(pieces, model_type=2, byte_fallback=True, dummy=True, remove_ws=False):
    m = b""
    for text, score, kind in pieces:
        m += field(1, 2, field(1, 2, text.encode()) + field(2, 5, struct.pack("<f", score)) + field(3, 0, kind))
    m += field(2, 2, field(3, 0, model_type) + field(35, 0, int(byte_fallback)))
    m += field(3, 2, field(3, 0, int(dummy)) + field(4, 0, int(remove_ws)))
    return m
pieces = [("<unk>", 0, 2), ("<s>", 0, 3), ("</s>", 0, 3)] + [("<0x%02X>" % i, 0, 6) for i in range(0, 256, 51)]
pieces += [(t, -i, 1) for i, t in enumerate(["▁", "e", "l", "o", "h", "▁h", "ll", "lo", "▁hel", "▁hello", "he", "el", "w", "r", "d", "▁w", "or", "ld", "▁world", "日", "本"])]
out("sentencepiece", "small_bpe.model", sp_model(pieces))
out("sentencepiece", "small_unigram.model", sp_model(pieces[:12], model_type=1, byte_fallback=False, dummy=False, remove_ws=True))

# ---- small tokenizer.json files ----
vocab = {t: i for i, (t, _, _) in enumerate(pieces)}
bpe = {
    "version": "1.0", "truncation": None, "padding": None, "added_tokens": [{"id": 1, "content": "<s>", "single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": True}],
    "normalizer": {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"}, {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]},
    "pre_tokenizer": None, "post_processor": None,
    "decoder": {"type": "Sequence", "decoders": [{"type": "Replace", "pattern": {"String": "▁"}, "content": " "}, {"type": "ByteFallback"}, {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
    "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None, "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "ignore_merges": False,
              "vocab": vocab, "merges": [["▁", "h"], ["l", "l"], ["l", "o"], ["h", "e"], ["▁h", "el"], ["o", "r"], ["l", "d"], ["▁", "w"]]},
}
out("tokenizer_json", "small_bpe.json", json.dumps(bpe).encode())
wp = dict(bpe, normalizer={"type": "BertNormalizer", "clean_text": True, "handle_chinese_chars": True, "strip_accents": None, "lowercase": True},
          pre_tokenizer={"type": "BertPreTokenizer"}, decoder={"type": "WordPiece", "prefix": "##", "cleanup": True},
          model={"type": "WordPiece", "unk_token": "<unk>", "continuing_subword_prefix": "##", "max_input_chars_per_word": 100, "vocab": vocab})
out("tokenizer_json", "small_wordpiece.json", json.dumps(wp).encode())
uni = dict(bpe, pre_tokenizer={"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": True}, decoder={"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": True},
           model={"type": "Unigram", "unk_id": 0, "vocab": [[t, float(-i)] for i, (t, _, _) in enumerate(pieces)], "byte_fallback": True})
out("tokenizer_json", "small_unigram.json", json.dumps(uni).encode())
bl = dict(bpe, pre_tokenizer={"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}, decoder={"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}, normalizer=None,
          post_processor={"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}], "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}], "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}})
out("tokenizer_json", "small_bytelevel.json", json.dumps(bl).encode())

# ---- small manifests: the tiny fixture's packages, converted by the project's own writer ----
tiny = os.environ.get("TINY_PACKAGES")
if tiny:
    for kind in ["base", "adapter"]:
        copy("manifest", os.path.join(tiny, kind, "manifest.json"), "tiny_%s.json" % kind)
