"""diffusers-hosted autoencoders (tokbench/tokenizers/diffusers_vae.py) against diffusers' own classes.

The fixtures in tests/data/diffusers_vae/ are tiny random models of each wrapped class written by diffusers'
`save_pretrained` (make_fixtures.py there). References are diffusers' own encode/decode calls and its
pipelines' latent transforms, run on a separately loaded copy of the same folder.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import tokbench
from tokbench.core import TokbenchError
from tokbench.registry import find
from tokbench.tokenizers import diffusers_vae as dv
from tokbench.weights import WeightsUnavailable

TORCH_THREADS = 1
FOLDERS = {
    "autoencoder_kl": 32,
    "autoencoder_kl_flux2": 32,
    "autoencoder_kl_qwenimage": 16,
    "autoencoder_dc": 16,
    "autoencoder_rae": 16,
    "autoencoder_tiny": 16,
    "vq_model": 32,
}


@pytest.fixture
def vae_dir(data_dir):
    return data_dir / "diffusers_vae"


def reference(folder):
    """The same folder loaded by diffusers alone, in float32."""
    import diffusers

    config = json.loads((folder / "config.json").read_text())
    model = getattr(diffusers, config["_class_name"]).from_pretrained(folder, torch_dtype=torch.float32)
    return model.eval(), config


def images(n, size, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g)


def reference_round_trip(model, class_name, x):
    """diffusers' own decode(encode(x)) for each class (posterior mode for the KL classes), in [0, 1]."""
    with torch.no_grad():
        if class_name == "AutoencoderRAE":  # takes and returns [0, 1]
            return model.decode(model.encode(x).latent).sample.clamp(0, 1)
        x = x * 2 - 1
        if class_name == "AutoencoderKLQwenImage":
            out = model.decode(model.encode(x.unsqueeze(2)).latent_dist.mode()).sample[:, :, 0]
        elif class_name in ("AutoencoderKL", "AutoencoderKLFlux2"):
            out = model.decode(model.encode(x).latent_dist.mode()).sample
        elif class_name == "AutoencoderDC":
            out = model.decode(model.encode(x).latent).sample
        else:  # AutoencoderTiny (.latents), VQModel (.latents, quantised inside decode)
            out = model.decode(model.encode(x).latents).sample
    return ((out + 1) / 2).clamp(0, 1)


@pytest.mark.parametrize("folder", sorted(FOLDERS))
def test_round_trip_equals_diffusers(vae_dir, folder):
    size = FOLDERS[folder]
    tok = tokbench.load_tokenizer("diffusers-vae", weights=vae_dir / folder, resolution=size)
    model, config = reference(vae_dir / folder)
    x = images(2, size)
    tokens = tok.encode(x)
    recon = tok.decode(tokens)
    expected = reference_round_trip(model, config["_class_name"], x)
    assert recon.shape == x.shape
    torch.testing.assert_close(recon, expected, atol=1e-5, rtol=0)
    assert tok.spec.family == "diffusers-vae" and tok.class_name == config["_class_name"]
    if config["_class_name"] == "VQModel":
        assert tokens.features is None and tokens.codebook_size == config["num_vq_embeddings"]
        with torch.no_grad():
            _, _, (_, _, ids) = model.quantize(model.encode(x * 2 - 1).latents)
        assert torch.equal(tokens.ids, ids.view(2, -1))
    else:
        n, c = tokens.features.shape[1:]
        assert n == tokens.grid[0] * tokens.grid[1] and c == tok.channels
        assert torch.equal(tokens.bits, torch.full((2,), float(n * c * 16), dtype=torch.float64))


def test_kl_features_are_the_scaled_shifted_posterior_mode(vae_dir):
    tok = tokbench.load_tokenizer("diffusers-vae", weights=vae_dir / "autoencoder_kl")
    model, config = reference(vae_dir / "autoencoder_kl")
    x = images(2, 32)
    with torch.no_grad():
        mode = model.encode(x * 2 - 1).latent_dist.mode()
    expected = (mode - config["shift_factor"]) * config["scaling_factor"]  # the SD3/FLUX pipelines' transform
    got = tok.encode(x).features.view(2, 16, 16, 4).permute(0, 3, 1, 2)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def test_flux2_features_are_its_pipelines_patchified_batch_normalised_latents(vae_dir):
    from diffusers import Flux2Pipeline

    tok = tokbench.load_tokenizer("diffusers-vae", weights=vae_dir / "autoencoder_kl_flux2")
    model, config = reference(vae_dir / "autoencoder_kl_flux2")
    x = images(1, 32)
    with torch.no_grad():
        z = Flux2Pipeline._patchify_latents(model.encode(x * 2 - 1).latent_dist.mode())
    mean = model.bn.running_mean.view(1, -1, 1, 1)
    std = torch.sqrt(model.bn.running_var.view(1, -1, 1, 1) + config["batch_norm_eps"])
    got = tok.encode(x).features.view(1, 8, 8, 16).permute(0, 3, 1, 2)
    torch.testing.assert_close(got, (z - mean) / std, atol=1e-5, rtol=0)
    assert tok.spec.tokens_per_image == 64 and tok.spec.bits_per_token == 16 * 16


def test_qwen_image_features_use_per_channel_mean_and_std(vae_dir):
    tok = tokbench.load_tokenizer("diffusers-vae", weights=vae_dir / "autoencoder_kl_qwenimage", resolution=16)
    model, config = reference(vae_dir / "autoencoder_kl_qwenimage")
    x = images(1, 16)
    with torch.no_grad():
        z = model.encode((x * 2 - 1).unsqueeze(2)).latent_dist.mode()[:, :, 0]
    mean = torch.tensor(config["latents_mean"]).view(1, -1, 1, 1)
    std = torch.tensor(config["latents_std"]).view(1, -1, 1, 1)
    got = tok.encode(x).features.view(1, 8, 8, 4).permute(0, 3, 1, 2)
    torch.testing.assert_close(got, (z - mean) / std, atol=1e-5, rtol=0)


def test_sample_draws_from_the_posterior_with_the_given_seed(vae_dir):
    tok = tokbench.load_tokenizer("diffusers-vae", weights=vae_dir / "autoencoder_kl", sample=True, seed=3)
    model, config = reference(vae_dir / "autoencoder_kl")
    x = images(2, 32)
    with torch.no_grad():
        z = model.encode(x * 2 - 1).latent_dist.sample(generator=torch.Generator().manual_seed(3))
    first = tok.encode(x)
    torch.testing.assert_close(first.features.view(2, 16, 16, 4).permute(0, 3, 1, 2),
                               (z - config["shift_factor"]) * config["scaling_factor"], atol=1e-6, rtol=0)
    assert torch.equal(tok.encode(x).features, first.features)  # re-seeded every batch: reproducible
    mode = tokbench.load_tokenizer("diffusers-vae", weights=vae_dir / "autoencoder_kl").encode(x)
    assert not torch.allclose(mode.features, first.features)
    assert first.meta["posterior"] == "sample, seed 3" and "seed 3" in tok.spec.notes
    with pytest.raises(TokbenchError, match="KL posterior"):
        tokbench.load_tokenizer("diffusers-vae", weights=vae_dir / "autoencoder_dc", sample=True)


def test_decode_takes_features_back_and_checks_them(vae_dir):
    tok = tokbench.load_tokenizer("diffusers-vae", weights=vae_dir / "autoencoder_kl")
    model, config = reference(vae_dir / "autoencoder_kl")
    tokens = tok.encode(images(1, 32))
    z = tokens.features.view(1, 16, 16, 4).permute(0, 3, 1, 2)
    with torch.no_grad():  # the pipelines' decode: latents / scaling + shift
        expected = model.decode(z / config["scaling_factor"] + config["shift_factor"]).sample
    torch.testing.assert_close(tok.decode(tokens), ((expected + 1) / 2).clamp(0, 1), atol=1e-5, rtol=0)
    tokens.features = tokens.features[:, :, :3]
    with pytest.raises(TokbenchError, match=r"\(B, h\*w, 4\)"):
        tok.decode(tokens)
    with pytest.raises(TokbenchError, match="multiples of 2 .*resize to 30x30"):
        tok.encode(images(1, 31))


def _to_ldm(sd):
    """diffusers AutoencoderKL keys -> the original CompVis/LDM single-file layout (the inverse of diffusers'
    convert_ldm_vae_checkpoint; diffusers ships no exporter for VAEs), for a two-level encoder/decoder."""
    out = {}
    n_up = 2
    for key, value in sd.items():
        k = key
        for part in ("encoder", "decoder"):
            k = k.replace(f"{part}.conv_norm_out", f"{part}.norm_out")
            k = k.replace(f"{part}.mid_block.resnets.0", f"{part}.mid.block_1")
            k = k.replace(f"{part}.mid_block.resnets.1", f"{part}.mid.block_2")
            k = k.replace(f"{part}.mid_block.attentions.0", f"{part}.mid.attn_1")
        for i in range(n_up):
            k = k.replace(f"encoder.down_blocks.{i}.resnets", f"encoder.down.{i}.block")
            k = k.replace(f"encoder.down_blocks.{i}.downsamplers.0", f"encoder.down.{i}.downsample")
            k = k.replace(f"decoder.up_blocks.{i}.resnets", f"decoder.up.{n_up - 1 - i}.block")
            k = k.replace(f"decoder.up_blocks.{i}.upsamplers.0", f"decoder.up.{n_up - 1 - i}.upsample")
        k = k.replace("conv_shortcut", "nin_shortcut")
        if ".mid.attn_1." in k:
            k = (k.replace("group_norm", "norm").replace("to_q", "q").replace("to_k", "k").replace("to_v", "v")
                 .replace("to_out.0", "proj_out"))
            if value.ndim == 2:  # LDM's attention uses 1x1 convolutions
                value = value[:, :, None, None]
        out[k] = value.float()
    return out


def test_single_file_original_layout_loads_through_from_single_file(vae_dir, tmp_path):
    folder = vae_dir / "autoencoder_kl"
    ldm = _to_ldm(load_file(folder / "diffusion_pytorch_model.safetensors"))
    assert "encoder.down.0.block.0.conv1.weight" in ldm and "decoder.mid.attn_1.q.weight" in ldm
    path = tmp_path / "vae-ft-mse-840000-ema-pruned.safetensors"
    save_file(ldm, path)
    config = json.loads((folder / "config.json").read_text())
    via_folder = tokbench.load_tokenizer("diffusers-vae", weights=folder)
    x = images(2, 32)
    expected = via_folder.decode(via_folder.encode(x))
    ckpt = tmp_path / "vae-ft-mse-840000-ema-pruned.ckpt"  # the Lightning container of the .ckpt release
    torch.save({"state_dict": ldm, "global_step": 840000}, ckpt)
    for tok in (
        tokbench.load_tokenizer("diffusers-vae", weights=path, config=folder / "config.json"),
        tokbench.load_tokenizer("sd-vae-ft-mse-original", weights=path, config=config, resolution=32),
        tokbench.load_tokenizer("diffusers-vae", weights=ckpt, config=config),
    ):
        assert tok.spec.source["layout"] == "single file"
        torch.testing.assert_close(tok.decode(tok.encode(x)), expected, atol=1e-6, rtol=0)
    with pytest.raises(TokbenchError, match="config="):
        tokbench.load_tokenizer("diffusers-vae", weights=path)
    # a released variant's file without config: the table's full-size config, which these tiny weights do not fit
    with pytest.raises(TokbenchError, match="single-file AutoencoderKL"):
        tokbench.load_tokenizer("sd-vae-ft-mse-original", weights=path)


# Independent values from the releases' config.json files / papers: latent values per position and downsampling.
KNOWN_GEOMETRY = {
    "sd-vae-ft-ema": (4, 8), "sd-vae-ft-mse": (4, 8), "sd-vae-ft-mse-original": (4, 8), "sdxl-vae": (4, 8),
    "janusflow-1.3b-vae": (4, 8), "sdxl-vae-fp16-fix": (4, 8), "sd3.5-large-vae": (16, 8),
    "flux1-dev-vae": (16, 8), "flux1-schnell-vae": (16, 8), "flux2-dev-vae": (128, 16), "qwen-image-vae": (16, 8),
    "dc-ae-f32c32-sana-1.0": (32, 32), "dc-ae-f64c128-in-1.0": (128, 64), "rae-dinov2-b-vitxl": (768, 16),
    "taesd": (4, 8), "taesdxl": (4, 8), "kandinsky-2.2-movq": (4, 8),
    # Wan 2.1: 16 ch at 8x; Wan 2.2 TI2V: 48 ch at 16x; HunyuanImage 2.1: 64 ch at 32x; Cosmos CV8x8x8; KVAE
    # 2D: 16 ch at 8x; Lumina-DiMOO (aMUSEd VQ): 16x with 64-dim codes; MoVQGAN: 32x32 of 256; MAR KL-16
    "wan2.1-vae": (16, 8), "wan2.1-vae-original": (16, 8), "showo2-wan2.1-vae": (16, 8), "wan2.2-vae": (48, 16),
    "wan2.2-vae-original": (48, 16), "hunyuanimage-2.1-vae": (64, 32), "cosmos-1.0-cv8x8x8": (16, 8),
    "kvae-2d-1.0": (16, 8), "lumina-dimoo-vq": (64, 16), "movqgan-270m": (4, 8), "lumina-mgpt-2.0-movqgan": (4, 8),
    "mar-kl16": (16, 16),
}  # fmt: skip


def test_every_release_is_checked_for_its_geometry():
    assert set(KNOWN_GEOMETRY) == set(dv.RELEASE_BY_NAME)


@pytest.mark.parametrize("name", sorted(KNOWN_GEOMETRY))
def test_release_table_builds_full_size_on_meta(name):
    release = dv.RELEASE_BY_NAME[name]
    model = dv.build_on_meta(name)
    assert all(p.is_meta for p in model.parameters())
    r = release.resolution
    x = torch.empty(1, 3, r, r, device="meta")
    video = release.class_name in ("AutoencoderKLQwenImage", "AutoencoderKLWan", "AutoencoderKLCosmos")
    with torch.no_grad():
        if video:  # still images as one frame
            z = model.encode(x.unsqueeze(2)).latent_dist.mode()[:, :, 0]
        else:
            out = model.encode(x)
            z = out.latent_dist.mode() if hasattr(out, "latent_dist") else getattr(out, "latent", None)
            z = out.latents if z is None else z
    channels, f = KNOWN_GEOMETRY[name]
    assert release.geometry == (channels, f)
    patch = 2 if release.class_name == "AutoencoderKLFlux2" else 1  # FLUX.2's pipeline patchifies 2x2
    assert tuple(z.shape) == (1, channels // patch**2, r * patch // f, r * patch // f)
    _, variant = find(name)
    assert variant.family == "diffusers-vae" and variant.weights.repo_id == release.repo_id


def test_sd_vae_parameter_count():
    # 83,653,863: the Stable Diffusion kl-f8 autoencoder
    assert sum(p.numel() for p in dv.build_on_meta("sd-vae-ft-mse").parameters()) == 83_653_863


@pytest.mark.parametrize("name, millions", [
    ("movqgan-270m", 270), ("kandinsky-2.2-movq", 67),  # SBER-MoVQGAN's names: 270M and 67M parameters
    ("wan2.1-vae", 127),  # the Wan report: Wan-VAE has 127M parameters
])  # fmt: skip
def test_published_parameter_counts(name, millions):
    count = sum(p.numel() for p in dv.build_on_meta(name).parameters())
    assert abs(count / 1e6 - millions) < 1.0, count


def test_gated_releases_say_how_to_get_access():
    for name in ("flux1-dev-vae", "sd3.5-large-vae", "flux2-dev-vae"):
        with pytest.raises(WeightsUnavailable, match="gated") as e:
            tokbench.load_tokenizer(name)
        assert "hf auth login" in str(e.value) and f"tokbench fetch {name}" in str(e.value)
    with pytest.raises(WeightsUnavailable, match="sd-vae-ft-mse"):  # the family name: its default release
        tokbench.load_tokenizer("diffusers-vae")
    with pytest.raises(WeightsUnavailable) as e:
        tokbench.load_tokenizer("sdxl-vae")
    assert "gated" not in str(e.value) and "stabilityai/sdxl-vae" in str(e.value)


def test_janusflow_alias_is_the_sdxl_vae():
    _, janus = find("janusflow-1.3b-vae")
    _, sdxl = find("sdxl-vae")
    assert janus.weights == sdxl.weights and janus.resolution == 384


def test_release_weights_resolve_from_tokbench_weights(vae_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TOKBENCH_WEIGHTS", str(tmp_path))
    shutil.copytree(vae_dir / "autoencoder_kl", tmp_path / "sd-vae-ft-mse")
    tok = tokbench.load_tokenizer("sd-vae-ft-mse", resolution=32)  # the folder's config.json wins
    assert tok.spec.name == "sd-vae-ft-mse" and tok.spec.tokens_per_image == 256
    (tmp_path / "sd-vae-ft-mse" / "config.json").unlink()
    # without config.json the table's full-size config is used: these tiny weights do not fit it
    with pytest.raises(TokbenchError, match="does not fit its config"):
        tokbench.load_tokenizer("sd-vae-ft-mse")


def test_bad_folders_are_clear_errors(vae_dir, tmp_path):
    with pytest.raises(TokbenchError, match="no config.json"):
        tokbench.load_tokenizer("diffusers-vae", weights=tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    with pytest.raises(TokbenchError, match="not supported"):
        tokbench.load_tokenizer("diffusers-vae", weights=tmp_path)
    broken = tmp_path / "broken"
    shutil.copytree(vae_dir / "autoencoder_kl", broken)
    config = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "latent_channels": 8}))
    with pytest.raises(TokbenchError, match="does not fit"):
        tokbench.load_tokenizer("diffusers-vae", weights=broken)
    with pytest.raises(TokbenchError, match="config= is not used"):
        tokbench.load_tokenizer("diffusers-vae", weights=vae_dir / "autoencoder_kl", config={"latent_channels": 8})
    with pytest.raises(TokbenchError, match="unknown diffusers-vae options"):
        tokbench.load_tokenizer("diffusers-vae", weights=vae_dir / "autoencoder_kl", n_tokens=3)


def test_non_finite_reconstruction_names_the_dtype_to_use(vae_dir):
    tok = tokbench.load_tokenizer("diffusers-vae", weights=vae_dir / "autoencoder_kl", dtype="float16")
    x = images(1, 32)
    tokens = tok.encode(x)
    with torch.no_grad():  # activations beyond float16's range, as SDXL's VAE reaches on real images
        tok.model.decoder.conv_in.weight.fill_(6e4)
    with pytest.raises(TokbenchError, match=r"non-finite reconstructions in float16.*dtype: float32") as e:
        tok.decode(tokens)
    assert "sdxl-vae-fp16-fix" in str(e.value)


def test_random_weights_build_the_released_architecture():
    tok = tokbench.load_tokenizer("taesd", weights="random", resolution=32)
    assert tok.spec.source["weights"].startswith("random")
    assert tok.decode(tok.encode(images(1, 32))).shape == (1, 3, 32, 32)


def _suite(tmp_path, vae_dir, overflow_dir):
    from tests.test_runner import make_folder

    folder = make_folder(tmp_path / "images", n=3, corrupt=False)
    path = tmp_path / "suite.yaml"
    path.write_text(f"""\
name: vae-rate
data: ["folder:{folder}"]
resolution: 32
batch_size: 2
download: false
checkpoint_seconds: 0
metrics: [psnr, bpp]
tokenizers:
  - name: diffusers-vae
    label: tiny-kl
    weights: {vae_dir / 'autoencoder_kl'}
  - name: diffusers-vae
    label: tiny-vq
    weights: {vae_dir / 'vq_model'}
  - name: diffusers-vae
    label: overflowing-fp16
    weights: {overflow_dir}
    options: {{dtype: float16}}
  - name: jpeg
    sweep: {{quality: [20, 80]}}
""")
    return path


def test_rate_convention_and_non_finite_jobs_in_a_report(vae_dir, tmp_path):
    from tokbench.report import CONTINUOUS_NOTE, write_report
    from tokbench.runner import run_suite
    from tokbench.suite import load_suite

    overflow = tmp_path / "overflow"
    shutil.copytree(vae_dir / "autoencoder_kl", overflow)
    sd = load_file(overflow / "diffusion_pytorch_model.safetensors")
    sd["decoder.conv_in.weight"] = torch.full_like(sd["decoder.conv_in.weight"], 6e4)  # overflows in float16
    save_file(sd, overflow / "diffusion_pytorch_model.safetensors")
    run = tmp_path / "run"
    summaries = run_suite(load_suite(_suite(tmp_path, vae_dir, overflow)), run, progress=False, log=lambda s: None)
    by_label = {s["label"]: s for s in summaries}
    kl = by_label["tiny-kl"]["results"]
    # 4 latent values per 2x2 pixels at 16-bit storage: 1 value/px, 16 bpp
    assert kl["latent_values_per_pixel"] == pytest.approx(1.0) and kl["bpp"] == pytest.approx(16.0)
    assert kl["latent_storage_bits"] == pytest.approx(16.0)
    assert "16-bit storage" in by_label["tiny-kl"]["metric_protocols"]["bpp"]
    vq = by_label["tiny-vq"]["results"]
    assert "latent_values_per_pixel" not in vq and vq["bpp"] == pytest.approx(5 / 4)  # log2(32) per 2x2 px
    failed = by_label["overflowing-fp16"]
    assert failed["status"] == "failed" and "non-finite" in failed["reason"] and "dtype: float32" in failed["reason"]
    report = (write_report(run) / "report.md").read_text()
    assert CONTINUOUS_NOTE in report and "latent values/px" in report
    assert "- tiny-kl: 1.0000 latent values/px x 16 bits = 16.0000 bpp" in report
    assert "16.0000 †" in report and "1.2500 †" not in report
    assert "non-finite reconstructions in float16" in report
    assert "16-bit storage each" in report.split("## Protocols")[1]  # the bpp note survives the codec jobs
    assert CONTINUOUS_NOTE in (run / "report" / "index.html").read_text()
    assert (run / "report" / "rd_psnr.png").is_file()


def test_rate_distortion_plot_draws_continuous_tokenizers_apart(tmp_path, monkeypatch):
    import matplotlib.axes
    import pandas as pd

    from tokbench.report import rate_distortion_plot

    calls = []
    original = matplotlib.axes.Axes.plot
    monkeypatch.setattr(matplotlib.axes.Axes, "plot",
                        lambda self, *a, **k: calls.append((a, k)) or original(self, *a, **k))
    df = pd.DataFrame([
        {"tokenizer": "sd-vae", "data": "d", "family": "diffusers-vae", "bpp": 16.0, "psnr": 30.0,
         "latent_values_per_pixel": 1.0, "params": ""},
        {"tokenizer": "vq", "data": "d", "family": "llamagen-vq", "bpp": 0.05, "psnr": 22.0,
         "latent_values_per_pixel": float("nan"), "params": ""},
    ])
    assert rate_distortion_plot(df, "psnr", tmp_path / "rd.png")
    styles = {k["label"]: (a[2], k["marker"]) for a, k in calls}
    assert styles == {"sd-vae (continuous)": (":", "s"), "vq": ("-", "o")}


def test_missing_or_unexpected_keys_are_refused(vae_dir, tmp_path):
    for mutate in ("drop", "add"):
        folder = tmp_path / mutate
        shutil.copytree(vae_dir / "autoencoder_kl", folder)
        sd = load_file(folder / "diffusion_pytorch_model.safetensors")
        if mutate == "drop":
            sd.pop("decoder.conv_out.bias")
        else:
            sd["decoder.extra.weight"] = torch.zeros(1)
        save_file(sd, folder / "diffusion_pytorch_model.safetensors")
        with pytest.raises(TokbenchError, match="decoder.conv_out.bias" if mutate == "drop" else "decoder.extra"):
            tokbench.load_tokenizer("diffusers-vae", weights=folder)


@pytest.mark.parametrize("suite", ["reproduce/sd_vae.yaml", "reproduce/unified_vaes.yaml",
                                   "sweeps/rate_distortion_vae.yaml"])
def test_shipped_suites_name_known_tokenizers(suite, monkeypatch):
    from pathlib import Path

    from tokbench.suite import load_suite

    monkeypatch.setenv("COCO_VAL2017", "/nonexistent")
    monkeypatch.setenv("IMAGENET_VAL", "/nonexistent")
    s = load_suite(Path(__file__).parents[1] / "benchmarks" / suite)
    for entry in s.tokenizers:
        find(entry.name)
        published = entry.published or {}
        if published:  # cited numbers are the model cards' (see the suite's header)
            release = dv.RELEASE_BY_NAME[entry.name]
            assert dict(release.published) == dict(published)


def test_sample_seed_defaults_to_the_seed_torch_was_given(vae_dir):
    torch.manual_seed(7)  # what `tokbench run` does with the suite's seed before loading
    tok = tokbench.load_tokenizer("diffusers-vae", weights=vae_dir / "autoencoder_kl", sample=True)
    assert tok.seed == 7 and "seed 7" in tok.spec.notes


def test_deprecated_attention_key_names_load(vae_dir, tmp_path):
    # diffusers checkpoints from 2022 (e.g. the sd-vae-ft-* uploads) name the mid-block attention
    # query/key/value/proj_attn; diffusers renames them on load, and tokbench's strict check runs after that
    folder = tmp_path / "old"
    shutil.copytree(vae_dir / "autoencoder_kl", folder)
    sd = load_file(folder / "diffusion_pytorch_model.safetensors")
    old = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    renamed = {}
    for k, v in sd.items():
        for new, legacy in old.items():
            if ".attentions.0." in k and f".{new}." in k:
                k = k.replace(f".{new}.", f".{legacy}.")
        renamed[k] = v
    assert "encoder.mid_block.attentions.0.query.weight" in renamed
    save_file(renamed, folder / "diffusion_pytorch_model.safetensors")
    a = tokbench.load_tokenizer("diffusers-vae", weights=folder)
    b = tokbench.load_tokenizer("diffusers-vae", weights=vae_dir / "autoencoder_kl")
    x = images(1, 32)
    assert torch.equal(a.decode(a.encode(x)), b.decode(b.encode(x)))
