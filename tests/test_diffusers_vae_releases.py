"""The unified models' autoencoders in diffusers-vae: Wan 2.1 / 2.2, HunyuanImage 2.1, Cosmos, KVAE,
aMUSEd VQ (Lumina-DiMOO), MoVQGAN (Lumina-mGPT 2.0), MAR KL-16, and the generic latents_mean/std path.

Tiny random models of each class are built here and written by diffusers' own `save_pretrained` (no files
committed). References are independent of tokbench's code: diffusers' own encode/decode and pipelines'
latent transforms on a second copy of the folder; diffusers' `from_single_file` for Wan 2.1's `.pth`; the
taming/LDM architecture written out below from the original code's description (MAR models/vae.py, MoVQGAN
movq_modules.py) on the original key layout, for the MAR and MoVQGAN single-file loaders.
"""

from __future__ import annotations

import json
import re

import pytest
import torch
import torch.nn.functional as F

import tokbench
from tokbench.core import TokbenchError
from tokbench.tokenizers import diffusers_vae as dv

WAN21 = dict(base_dim=8, z_dim=4, dim_mult=[1, 2, 4, 4], num_res_blocks=2, temperal_downsample=[False, True, True],
             latents_mean=[0.3, -0.2, 0.1, -0.5], latents_std=[1.7, 0.6, 2.2, 0.9])  # fmt: skip
WAN22 = dict(base_dim=8, decoder_base_dim=12, z_dim=6, dim_mult=[1, 2, 2], num_res_blocks=1,
             temperal_downsample=[False, True], is_residual=True, in_channels=12, out_channels=12, patch_size=2,
             scale_factor_spatial=8, latents_mean=[0.1, -0.3, 0.2, 0.0, -0.1, 0.4],
             latents_std=[0.5, 1.5, 0.8, 1.2, 2.0, 0.7])  # fmt: skip
# Cosmos: mean/std per channel *and latent frame* (4 channels x 3 frames): a still image uses frame 0
COSMOS = dict(latent_channels=4, encoder_block_out_channels=(8, 16), decode_block_out_channels=(16, 16),
              attention_resolutions=(8,), resolution=32, num_layers=1, patch_size=4, spatial_compression_ratio=8,
              temporal_compression_ratio=4, latents_mean=[0.2, 0.9, 0.9, -0.1, 0.8, 0.8, 0.3, 0.7, 0.7, -0.4, 0.6, 0.6],
              latents_std=[0.5, 3.0, 3.0, 1.5, 3.0, 3.0, 0.8, 3.0, 3.0, 1.1, 3.0, 3.0])  # fmt: skip
TINY = {
    "wan21": ("AutoencoderKLWan", WAN21),
    "wan22": ("AutoencoderKLWan", WAN22),
    "hunyuanimage": ("AutoencoderKLHunyuanImage", dict(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=[32, 32, 32], layers_per_block=1,
        spatial_compression_ratio=4, sample_size=32, scaling_factor=0.7)),
    "cosmos": ("AutoencoderKLCosmos", COSMOS),
    "kvae": ("AutoencoderKLKVAE", dict(channels=32, num_enc_blocks=1, num_dec_blocks=1, z_channels=4, ch_mult=(1, 2),
                                       sample_size=32)),
    "amused_vq": ("VQModel", dict(
        block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, latent_channels=4, norm_num_groups=4,
        num_vq_embeddings=32, mid_block_add_attention=False, lookup_from_codebook=True)),
    "kl_mean_std": ("AutoencoderKL", dict(
        block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, latent_channels=4, norm_num_groups=4,
        scaling_factor=0.5, latents_mean=[0.2, -0.4, 0.1, 0.3], latents_std=[2.0, 0.5, 1.5, 0.8])),
    "mar_kl": ("AutoencoderKL", dict(
        block_out_channels=(8, 16, 16), down_block_types=("DownEncoderBlock2D",) * 2 + ("AttnDownEncoderBlock2D",),
        up_block_types=("UpDecoderBlock2D",) * 3, layers_per_block=2, latent_channels=4, norm_num_groups=4,
        scaling_factor=0.2325)),
    "movqgan": ("VQModel", dict(
        block_out_channels=(32, 64), down_block_types=("DownEncoderBlock2D", "AttnDownEncoderBlock2D"),
        up_block_types=("AttnUpDecoderBlock2D", "UpDecoderBlock2D"), layers_per_block=1, latent_channels=4,
        norm_num_groups=32, num_vq_embeddings=32, vq_embed_dim=4, norm_type="spatial")),
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """name -> a diffusers folder of a seeded random tiny model (float32)."""
    import diffusers

    root = tmp_path_factory.mktemp("tiny_vaes")
    out = {}
    for name, (class_name, config) in TINY.items():
        torch.manual_seed(0)
        model = getattr(diffusers, class_name)(**config)
        with torch.no_grad():  # give zero-initialised weights (attention output projections) values too
            for p in model.parameters():
                if p.ndim > 1 and not p.any():
                    p.normal_(0, 0.05)
        model.save_pretrained(root / name)
        out[name] = root / name
    return out


def reference(folder):
    import diffusers

    config = json.loads((folder / "config.json").read_text())
    return getattr(diffusers, config["_class_name"]).from_pretrained(folder).eval(), config


def images(n, h, w, seed=0):
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


def reference_round_trip(model, class_name, x, pixels="[-1, 1]"):
    """diffusers' own decode(encode(x)) (posterior mode), in [0, 1]; video classes see one frame."""
    with torch.no_grad():
        y = x * 2 - 1 if pixels == "[-1, 1]" else x
        if class_name in ("AutoencoderKLWan", "AutoencoderKLCosmos"):
            out = model.decode(model.encode(y.unsqueeze(2)).latent_dist.mode()).sample[:, :, 0]
        elif class_name == "VQModel":
            out = model.decode(model.encode(y).latents).sample
        else:
            out = model.decode(model.encode(y).latent_dist.mode()).sample
    return ((out + 1) / 2).clamp(0, 1) if pixels == "[-1, 1]" else out.clamp(0, 1)


SIZES = {"wan21": (32, 48), "wan22": (32, 48), "hunyuanimage": (16, 24), "cosmos": (32, 48), "kvae": (16, 24),
         "amused_vq": (16, 24), "kl_mean_std": (16, 24), "mar_kl": (16, 24), "movqgan": (16, 24)}


@pytest.mark.parametrize("name", sorted(TINY))
def test_round_trip_equals_diffusers_on_a_non_square_batch(tiny, name):
    h, w = SIZES[name]
    tok = tokbench.load_tokenizer("diffusers-vae", weights=tiny[name])
    model, config = reference(tiny[name])
    x = images(2, h, w)
    tokens = tok.encode(x)
    recon = tok.decode(tokens)
    assert recon.shape == x.shape
    torch.testing.assert_close(recon, reference_round_trip(model, config["_class_name"], x), atol=1e-5, rtol=0)
    channels, f = dv.latent_geometry(config["_class_name"], config)
    assert tokens.grid == (h // f, w // f)
    if config["_class_name"] == "VQModel":
        assert tokens.ids.dtype == torch.long and tokens.codebook_size == config["num_vq_embeddings"]
        assert 0 <= int(tokens.ids.min()) and int(tokens.ids.max()) < config["num_vq_embeddings"]
    else:
        assert tokens.features.shape == (2, (h // f) * (w // f), channels)
        assert torch.equal(tokens.bits, torch.full((2,), float(h // f * w // f * channels * 16), dtype=torch.float64))


def _grid(tokens, channels):
    h, w = tokens.grid
    return tokens.features.view(-1, h, w, channels).permute(0, 3, 1, 2)


def test_wan_features_are_its_pipelines_mean_std_normalised_latents(tiny):
    # WanPipeline: latents_std = 1 / std; latents = (z - mean) * latents_std; decode: z / latents_std + mean
    for name in ("wan21", "wan22"):
        tok = tokbench.load_tokenizer("diffusers-vae", weights=tiny[name])
        model, config = reference(tiny[name])
        x = images(1, 32, 32)
        with torch.no_grad():
            z = model.encode((x * 2 - 1).unsqueeze(2)).latent_dist.mode()
        mean = torch.tensor(config["latents_mean"]).view(1, -1, 1, 1, 1)
        inv_std = 1.0 / torch.tensor(config["latents_std"]).view(1, -1, 1, 1, 1)
        tokens = tok.encode(x)
        got = _grid(tokens, config["z_dim"])
        torch.testing.assert_close(got, ((z - mean) * inv_std)[:, :, 0], atol=1e-5, rtol=0)
        with torch.no_grad():
            expected = model.decode(got.unsqueeze(2) / inv_std + mean).sample[:, :, 0]
        torch.testing.assert_close(tok.decode(tokens), ((expected + 1) / 2).clamp(0, 1), atol=1e-5, rtol=0)
        assert "one-frame video" in tok.spec.notes and "latents_mean" in tok.spec.notes


def test_cosmos_features_use_frame_zero_statistics_and_sigma_data(tiny):
    # CosmosVideoToWorldPipeline: mean/std viewed (1, C, T, 1, 1)[:, :, :frames]; (z - mean) * sigma_data / std
    tok = tokbench.load_tokenizer("diffusers-vae", weights=tiny["cosmos"])
    model, config = reference(tiny["cosmos"])
    x = images(1, 32, 32)
    with torch.no_grad():
        z = model.encode((x * 2 - 1).unsqueeze(2)).latent_dist.mode()
    mean = torch.tensor(config["latents_mean"]).view(1, 4, -1, 1, 1)[:, :, :1]
    std = torch.tensor(config["latents_std"]).view(1, 4, -1, 1, 1)[:, :, :1]
    tokens = tok.encode(x)
    expected = ((z - mean) * 0.5 / std)[:, :, 0]
    torch.testing.assert_close(_grid(tokens, 4), expected, atol=1e-5, rtol=0)
    with torch.no_grad():
        back = model.decode(_grid(tokens, 4).unsqueeze(2) * std / 0.5 + mean).sample[:, :, 0]
    torch.testing.assert_close(tok.decode(tokens), ((back + 1) / 2).clamp(0, 1), atol=1e-5, rtol=0)
    assert "sigma_data 0.5" in tok.spec.notes
    with pytest.raises(TokbenchError, match="KL posterior"):
        tokbench.load_tokenizer("diffusers-vae", weights=tiny["cosmos"], sample=True)


def test_hunyuanimage_scales_and_kvae_keeps_the_latent(tiny):
    tok = tokbench.load_tokenizer("diffusers-vae", weights=tiny["hunyuanimage"])
    model, config = reference(tiny["hunyuanimage"])
    x = images(1, 16, 16)
    with torch.no_grad():
        z = model.encode(x * 2 - 1).latent_dist.mode()
    torch.testing.assert_close(_grid(tok.encode(x), 4), z * config["scaling_factor"], atol=1e-6, rtol=0)
    tok = tokbench.load_tokenizer("diffusers-vae", weights=tiny["kvae"])
    model, _ = reference(tiny["kvae"])
    with torch.no_grad():
        z = model.encode(x * 2 - 1).latent_dist.mode()
    torch.testing.assert_close(_grid(tok.encode(x), 4), z, atol=1e-6, rtol=0)
    assert "normalisation none" in tok.spec.notes


def test_generic_latents_mean_std_path_in_both_directions(tiny):
    # SDXL-style pipelines: encode (z - mean) * scaling / std; decode z * std / scaling + mean
    tok = tokbench.load_tokenizer("diffusers-vae", weights=tiny["kl_mean_std"])
    model, config = reference(tiny["kl_mean_std"])
    mean = torch.tensor(config["latents_mean"]).view(1, -1, 1, 1)
    std = torch.tensor(config["latents_std"]).view(1, -1, 1, 1)
    scale = config["scaling_factor"]
    x = images(2, 16, 24)
    with torch.no_grad():
        z = model.encode(x * 2 - 1).latent_dist.mode()
    tokens = tok.encode(x)
    torch.testing.assert_close(_grid(tokens, 4), (z - mean) * scale / std, atol=1e-6, rtol=0)
    features = torch.randn(2, 8 * 12, 4, generator=torch.Generator().manual_seed(1))  # not an encoder's output
    given = tokbench.Tokens(features=features, grid=(8, 12))
    with torch.no_grad():
        expected = model.decode(_grid(given, 4) * std / scale + mean).sample
    torch.testing.assert_close(tok.decode(given), ((expected + 1) / 2).clamp(0, 1), atol=1e-5, rtol=0)


def test_lumina_dimoo_vq_takes_unit_range_images_and_gives_ids(tiny):
    # Lumina-DiMOO: VaeImageProcessor(do_normalize=False) -> encode(x in [0, 1]).latents -> quantize ids;
    # decode(ids, force_not_quantize=True, shape=(b, h, w, C)).sample.clip(0, 1)
    tok = tokbench.load_tokenizer("lumina-dimoo-vq", weights=tiny["amused_vq"], resolution=16)
    model, config = reference(tiny["amused_vq"])
    x = images(2, 16, 32)
    tokens = tok.encode(x)
    with torch.no_grad():
        latents = model.encode(x).latents
        ids = model.quantize(latents)[2][2].reshape(2, 8, 16)
        expected = model.decode(ids, force_not_quantize=True, shape=(2, 8, 16, 4)).sample.clip(0, 1)
    assert torch.equal(tokens.ids, ids.view(2, -1)) and tokens.codebook_size == 32
    torch.testing.assert_close(tok.decode(tokens), expected, atol=1e-6, rtol=0)
    assert tok.pixels == "[0, 1]" and tok.spec.normalisation == "[0, 1]"
    signed = tokbench.load_tokenizer("diffusers-vae", weights=tiny["amused_vq"])  # a bare folder: [-1, 1]
    assert signed.pixels == "[-1, 1]"
    chosen = tokbench.load_tokenizer("diffusers-vae", weights=tiny["amused_vq"], pixel_range="[0, 1]")
    assert torch.equal(chosen.encode(x).ids, tokens.ids)
    with pytest.raises(TokbenchError, match="pixel_range"):
        tokbench.load_tokenizer("diffusers-vae", weights=tiny["amused_vq"], pixel_range="0..1")


def test_sides_that_are_not_multiples_name_the_pipelines_rounded_size(tiny):
    tok = tokbench.load_tokenizer("diffusers-vae", weights=tiny["wan21"])
    with pytest.raises(TokbenchError, match=r"multiples of 8 .*resize to 32x40"):
        tok.encode(images(1, 36, 45))


def test_latent_statistics_of_the_wrong_length_are_refused(tiny, tmp_path):
    import shutil

    shutil.copytree(tiny["wan21"], tmp_path / "wan")
    config = json.loads((tmp_path / "wan" / "config.json").read_text())
    (tmp_path / "wan" / "config.json").write_text(json.dumps({**config, "latents_mean": [0.0] * 16}))
    with pytest.raises(TokbenchError, match="latents_mean has 16 values .* for 4 latent channels"):
        tokbench.load_tokenizer("diffusers-vae", weights=tmp_path / "wan")


# -- original single files ------------------------------------------------------------------------

_WAN_INNER = (("norm1.", "residual.0."), ("conv1.", "residual.2."), ("norm2.", "residual.3."),
              ("conv2.", "residual.6."), ("conv_shortcut.", "shortcut."))  # fmt: skip


def _wan_inner(rest):
    for new, old in _WAN_INNER:
        if rest.startswith(new):
            return old + rest[len(new):]
    return rest


def _to_wan_original(sd, res_blocks, residual):
    """AutoencoderKLWan keys -> Wan's original layout (wan/modules/vae2_1.py and vae2_2.py module names)."""
    out = {}
    for key, value in sd.items():
        k = key
        k = re.sub(r"^quant_conv\.", "conv1.", k)
        k = re.sub(r"^post_quant_conv\.", "conv2.", k)
        k = re.sub(r"^(encoder|decoder)\.conv_in\.", r"\1.conv1.", k)
        k = re.sub(r"^(encoder|decoder)\.norm_out\.", r"\1.head.0.", k)
        k = re.sub(r"^(encoder|decoder)\.conv_out\.", r"\1.head.2.", k)
        if m := re.match(r"^(encoder|decoder)\.mid_block\.(resnets|attentions)\.(\d)\.(.*)$", k):
            index = {"resnets0": 0, "attentions0": 1, "resnets1": 2}[m[2] + m[3]]
            k = f"{m[1]}.middle.{index}.{_wan_inner(m[4])}"
        elif m := re.match(r"^encoder\.down_blocks\.(\d+)\.(.*)$", k):
            if residual:
                r = re.match(r"^(resnets\.(\d+)|downsampler)\.(.*)$", m[2])
                j = r[2] if r[2] is not None else str(res_blocks)
                k = f"encoder.downsamples.{m[1]}.downsamples.{j}.{_wan_inner(r[3])}"
            else:
                k = f"encoder.downsamples.{m[1]}.{_wan_inner(m[2])}"
        elif m := re.match(r"^decoder\.up_blocks\.(\d+)\.(resnets\.(\d+)|upsamplers\.0|upsampler)\.(.*)$", k):
            level = int(m[1])
            if residual:
                j = m[3] if m[3] is not None else str(res_blocks + 1)
                k = f"decoder.upsamples.{level}.upsamples.{j}.{_wan_inner(m[4])}"
            else:
                j = int(m[3]) if m[3] is not None else res_blocks + 1
                k = f"decoder.upsamples.{level * (res_blocks + 2) + j}.{_wan_inner(m[4])}"
        out[k] = value
    return out


def test_wan21_pth_equals_diffusers_from_single_file_and_the_folder(tiny, tmp_path):
    import diffusers
    from safetensors.torch import load_file

    model, config = reference(tiny["wan21"])
    original = _to_wan_original(load_file(tiny["wan21"] / "diffusion_pytorch_model.safetensors"), 2, False)
    assert "decoder.upsamples.3.resample.1.weight" in original and "encoder.middle.1.to_qkv.weight" in original
    path = tmp_path / "Wan2.1_VAE.pth"
    torch.save(original, path)
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "config.json").write_text(json.dumps(config))
    official = diffusers.AutoencoderKLWan.from_single_file(str(path), config=str(tmp_path / "cfg"),
                                                          local_files_only=True)  # fmt: skip
    for name, p in official.state_dict().items():  # diffusers' own conversion of the same file
        assert torch.equal(p, model.state_dict()[name]), name
    via_folder = tokbench.load_tokenizer("diffusers-vae", weights=tiny["wan21"])
    x = images(2, 16, 24)
    expected = via_folder.decode(via_folder.encode(x))
    for tok in (tokbench.load_tokenizer("diffusers-vae", weights=path, config=config),
                tokbench.load_tokenizer("wan2.1-vae-original", weights=path, config=config, resolution=16)):
        assert tok.spec.source["layout"] == "single file" and "wan key map" in tok.spec.source["conversion"]
        torch.testing.assert_close(tok.decode(tok.encode(x)), expected, atol=0, rtol=0)


def test_wan22_pth_equals_the_folder(tiny, tmp_path):
    from safetensors.torch import load_file

    _, config = reference(tiny["wan22"])
    original = _to_wan_original(load_file(tiny["wan22"] / "diffusion_pytorch_model.safetensors"), 1, True)
    assert "encoder.downsamples.0.downsamples.1.resample.1.weight" in original
    assert "decoder.upsamples.0.upsamples.2.time_conv.weight" in original
    path = tmp_path / "Wan2.2_VAE.pth"
    torch.save(original, path)
    via_folder = tokbench.load_tokenizer("diffusers-vae", weights=tiny["wan22"])
    tok = tokbench.load_tokenizer("wan2.2-vae-original", weights=path, config=config, resolution=16)
    x = images(1, 16, 32)
    torch.testing.assert_close(tok.decode(tok.encode(x)), via_folder.decode(via_folder.encode(x)), atol=0, rtol=0)
    broken = dict(original)
    broken.pop("decoder.head.2.bias")
    torch.save(broken, path)
    with pytest.raises(TokbenchError, match="missing: decoder.conv_out.bias"):
        tokbench.load_tokenizer("diffusers-vae", weights=path, config=config)


def _to_taming(sd, levels):
    """diffusers Encoder/Decoder keys -> the taming/LDM layout (attention as 1x1 convolutions)."""
    attn = {"group_norm": "norm", "spatial_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    out = {}
    for key, value in sd.items():
        k = re.sub(r"\.conv_norm_out\.", ".norm_out.", key)
        k = re.sub(r"mid_block\.resnets\.(\d)", lambda m: f"mid.block_{int(m[1]) + 1}", k)
        k = k.replace("mid_block.attentions.0", "mid.attn_1")
        k = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", k)
        k = re.sub(r"encoder\.down_blocks\.(\d+)\.attentions\.", r"encoder.down.\1.attn.", k)
        k = re.sub(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", k)
        k = re.sub(r"decoder\.up_blocks\.(\d+)\.(resnets|attentions|upsamplers\.0)\.",
                   lambda m: f"decoder.up.{levels - 1 - int(m[1])}."
                             f"{ {'resnets': 'block', 'attentions': 'attn'}.get(m[2], 'upsample')}.", k)  # fmt: skip
        k = k.replace("conv_shortcut", "nin_shortcut")
        if re.search(r"\.(attn\.\d+|attn_1)\.", k):
            for new, old in attn.items():
                k = k.replace(f".{new}.", f".{old}.")
            if value.ndim == 2:
                value = value[:, :, None, None]
        out[k] = value
    return out


class TamingReference:
    """The taming/LDM autoencoder forward (GroupNorm or MoVQ's SpatialNorm, 1x1-conv single-head attention,
    asymmetric-padding downsample, nearest upsample), run directly on an original-layout state dict."""

    def __init__(self, sd, groups):
        self.sd, self.groups = sd, groups

    def conv(self, x, p, stride=1, padding=1):
        w = self.sd[f"{p}.weight"]
        return F.conv2d(x, w, self.sd[f"{p}.bias"], stride=stride, padding=padding if w.shape[-1] == 3 else 0)

    def norm(self, x, p, zq):
        if f"{p}.weight" in self.sd:
            return F.group_norm(x, self.groups, self.sd[f"{p}.weight"], self.sd[f"{p}.bias"], 1e-6)
        f = F.group_norm(x, 32, self.sd[f"{p}.norm_layer.weight"], self.sd[f"{p}.norm_layer.bias"], 1e-6)
        zq = F.interpolate(zq, size=x.shape[-2:], mode="nearest")
        return f * self.conv(zq, f"{p}.conv_y") + self.conv(zq, f"{p}.conv_b")

    def resnet(self, x, p, zq):
        h = self.conv(F.silu(self.norm(x, f"{p}.norm1", zq)), f"{p}.conv1")
        h = self.conv(F.silu(self.norm(h, f"{p}.norm2", zq)), f"{p}.conv2")
        return (self.conv(x, f"{p}.nin_shortcut") if f"{p}.nin_shortcut.weight" in self.sd else x) + h

    def attention(self, x, p, zq):
        h = self.norm(x, f"{p}.norm", zq)
        b, c, hh, ww = x.shape
        q, k, v = (self.conv(h, f"{p}.{n}").reshape(b, c, -1) for n in "qkv")
        weights = torch.softmax(q.transpose(1, 2) @ k * c**-0.5, dim=2)  # (b, query, key)
        out = (v @ weights.transpose(1, 2)).reshape(b, c, hh, ww)
        return x + self.conv(out, f"{p}.proj_out")

    def stage(self, x, p, zq=None):
        j = 0
        while f"{p}.block.{j}.conv1.weight" in self.sd:
            x = self.resnet(x, f"{p}.block.{j}", zq)
            if f"{p}.attn.{j}.q.weight" in self.sd:
                x = self.attention(x, f"{p}.attn.{j}", zq)
            j += 1
        return x

    def middle(self, x, p, zq=None):
        x = self.resnet(x, f"{p}.mid.block_1", zq)
        return self.resnet(self.attention(x, f"{p}.mid.attn_1", zq) if f"{p}.mid.attn_1.q.weight" in self.sd else x,
                           f"{p}.mid.block_2", zq)  # fmt: skip

    def encoder(self, x, levels):
        x = self.conv(x, "encoder.conv_in")
        for i in range(levels):
            x = self.stage(x, f"encoder.down.{i}")
            if f"encoder.down.{i}.downsample.conv.weight" in self.sd:
                x = self.conv(F.pad(x, (0, 1, 0, 1)), f"encoder.down.{i}.downsample.conv", stride=2, padding=0)
        x = self.middle(x, "encoder")
        return self.conv(F.silu(self.norm(x, "encoder.norm_out", None)), "encoder.conv_out")

    def decoder(self, z, levels, zq=None):
        x = self.middle(self.conv(z, "decoder.conv_in"), "decoder", zq)
        for i in reversed(range(levels)):
            x = self.stage(x, f"decoder.up.{i}", zq)
            if f"decoder.up.{i}.upsample.conv.weight" in self.sd:
                x = self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"), f"decoder.up.{i}.upsample.conv")
        return self.conv(F.silu(self.norm(x, "decoder.norm_out", zq)), "decoder.conv_out")


def test_mar_kl16_ckpt_equals_the_taming_architecture_and_the_folder(tiny, tmp_path):
    from safetensors.torch import load_file

    _, config = reference(tiny["mar_kl"])
    sd = _to_taming(load_file(tiny["mar_kl"] / "diffusion_pytorch_model.safetensors"), 3)
    assert "encoder.down.2.attn.1.q.weight" in sd and "decoder.up.0.block.2.conv1.weight" in sd
    path = tmp_path / "kl16.ckpt"
    torch.save({"model": sd}, path)  # MAR's container: torch.load(path)["model"]
    tok = tokbench.load_tokenizer("mar-kl16", weights=path, config=config, resolution=16)
    assert "taming key map" in tok.spec.source["conversion"]
    x = images(2, 16, 24)
    ref = TamingReference(sd, groups=4)
    with torch.no_grad():
        moments = ref.conv(ref.encoder(x * 2 - 1, 3), "quant_conv")
        mean = moments[:, :4]  # the posterior mode
        recon = ref.decoder(ref.conv(mean, "post_quant_conv"), 3)
    tokens = tok.encode(x)
    torch.testing.assert_close(_grid(tokens, 4), mean * 0.2325, atol=1e-5, rtol=0)  # MAR: z * 0.2325
    torch.testing.assert_close(tok.decode(tokens), ((recon + 1) / 2).clamp(0, 1), atol=1e-5, rtol=0)
    folder = tokbench.load_tokenizer("diffusers-vae", weights=tiny["mar_kl"])
    torch.testing.assert_close(tok.decode(tokens), folder.decode(folder.encode(x)), atol=0, rtol=0)
    # diffusers' own LDM conversion drops the encoder's down-block attention: that is why the key map exists
    import diffusers

    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "config.json").write_text(json.dumps(config))
    with pytest.raises(Exception):  # noqa: B017 - missing keys, whatever diffusers raises
        diffusers.AutoencoderKL.from_single_file(str(path), config=str(tmp_path / "cfg"), local_files_only=True)


def test_movqgan_ckpt_equals_the_movq_architecture_and_gives_ids(tiny, tmp_path):
    from safetensors.torch import load_file

    _, config = reference(tiny["movqgan"])
    sd = _to_taming(load_file(tiny["movqgan"] / "diffusion_pytorch_model.safetensors"), 2)
    assert "decoder.up.1.attn.0.norm.conv_y.weight" in sd and "decoder.norm_out.norm_layer.weight" in sd
    path = tmp_path / "movqgan_270M.ckpt"
    torch.save({**sd, "loss.discriminator.main.0.weight": torch.zeros(1)}, path)  # a training-only entry
    tok = tokbench.load_tokenizer("movqgan-270m", weights=path, config=config, resolution=16)
    x = images(2, 16, 24)
    ref = TamingReference(sd, groups=32)
    with torch.no_grad():
        h = ref.conv(ref.encoder(x * 2 - 1, 2), "quant_conv")
        codebook = sd["quantize.embedding.weight"]
        flat = h.permute(0, 2, 3, 1).reshape(-1, 4)
        ids = torch.cdist(flat, codebook).argmin(1)
        quant = codebook[ids].view(2, 8, 12, 4).permute(0, 3, 1, 2)
        recon = ref.decoder(ref.conv(quant, "post_quant_conv"), 2, zq=quant)
    tokens = tok.encode(x)
    assert tokens.ids.dtype == torch.long and tokens.codebook_size == 32
    assert torch.equal(tokens.ids, ids.view(2, -1))
    torch.testing.assert_close(tok.decode(tokens), ((recon + 1) / 2).clamp(0, 1), atol=1e-5, rtol=0)
    del sd["quant_conv.bias"]
    torch.save({"state_dict": sd}, path)
    with pytest.raises(TokbenchError, match="missing: quant_conv.bias"):
        tokbench.load_tokenizer("movqgan-270m", weights=path, config=config)


def test_a_folder_holding_the_original_file_and_an_unreadable_file(tiny, tmp_path):
    from safetensors.torch import load_file

    _, config = reference(tiny["wan21"])
    torch.save(_to_wan_original(load_file(tiny["wan21"] / "diffusion_pytorch_model.safetensors"), 2, False),
               tmp_path / "Wan2.1_VAE.pth")
    tok = tokbench.load_tokenizer("wan2.1-vae-original", weights=tmp_path, config=config, resolution=16)
    assert tok.spec.source["checkpoint"].endswith("Wan2.1_VAE.pth")
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(TokbenchError, match="could not read .*junk.ckpt"):
        tokbench.load_tokenizer("diffusers-vae", weights=tmp_path / "junk.ckpt", config=config)


def test_each_single_file_release_reads_through_the_key_map_its_layout_needs():
    expected = {"sd-vae-ft-mse-original": "ldm", "wan2.1-vae-original": "wan", "showo2-wan2.1-vae": "wan",
                "wan2.2-vae-original": "wan", "movqgan-270m": "taming", "lumina-mgpt-2.0-movqgan": "taming",
                "mar-kl16": "taming"}  # fmt: skip
    got = {r.name: dv.single_file_layout(r.class_name, r.config) for r in dv.RELEASES if r.single_file}
    assert got == expected
