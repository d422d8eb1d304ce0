"""Made c.pth / d.pth and their *_io.safetensors with the OFFICIAL UniTok code (see README.md).

Run from a copy of github.com/FoundationVision/UniTok @bb8012e (models/, utils/, open_clip/) with
vitamin_patch.diff applied, timm==1.0.8, typed-argument-parser and pytz importable (first on sys.path):
    python make_reference.py "$(cat c_config.json)" c
Not run by the tests.
"""

import json
import sys

import torch

torch.set_num_threads(1)
from models.unitok import UniTok  # noqa: E402
from models.vitamin import register_custom_vitamin  # noqa: E402
from utils.config import Args  # noqa: E402

NORM_WEIGHT = ("norm.weight", "norm1.weight", "norm2.weight", "norm3.weight")

cfg, out = json.loads(sys.argv[1]), sys.argv[2]
args = Args()
for k, v in cfg["unitok_args"].items():
    setattr(args, k, v)
register_custom_vitamin(args.model, **cfg["custom_vitamin"])
model = UniTok(args).eval()
g = torch.Generator().manual_seed(1)
with torch.no_grad():
    for n, p in model.named_parameters():  # N(0, 0.3) matrices, N(0, 0.05) vectors, norm weights around 1
        is_norm_weight = n.endswith(NORM_WEIGHT) or (".ln_" in n and n.endswith("weight"))
        p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.ndim > 1 else 0.05) + float(is_norm_weight))
    s = args.img_size
    x = torch.rand(cfg["batch"], 3, s, s, generator=g) * 2 - 1
    idx = model.img_to_idx(x)
    rec = model.idx_to_img(idx)
    sem = model.encode_image(x)
    txt = torch.randint(0, args.text_vocab_size - 1, (2, args.text_context_length), generator=g)
    txt[:, -1] = args.text_vocab_size - 1
    text_features = model.encode_text(txt)
stored = {k: getattr(args, k) for k in cfg["unitok_args"]}
ckpt = {"args": {**stored, "custom_vitamin": cfg["custom_vitamin"]}, "trainer": {"unitok": model.state_dict()}}
torch.save(ckpt, out + ".pth")
io = {"input": x, "indices": idx, "recon": rec, "semantic": sem, "text": txt, "text_features": text_features}
torch.save(io, out + ".io.pt")  # converted to <out>_io.safetensors afterwards
