"""The convolutional VQGAN encoder and decoder of LlamaGen's `vq_model.py`, and their blocks.

LlamaGen (FoundationVision/LlamaGen `tokenizer/tokenizer_image/vq_model.py`) ships this taming-style pixel
CNN; Janus copies it (`gen_vision_model`), TokenFlow reuses its `Encoder` / `Decoder`, and VAR its blocks.
Module and parameter names follow the official code exactly, so released state dicts load without renaming.
Written by hand: no maintained library has these modules with the released key names (diffusers'
`Encoder` / `Decoder` name and order their parameters differently).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

GROUP_NORM_GROUPS = 32
GROUP_NORM_EPS = 1e-6


def nonlinearity(x: torch.Tensor) -> torch.Tensor:
    """Swish / SiLU, as the official `x * sigmoid(x)`."""
    return x * torch.sigmoid(x)


def Normalize(  # noqa: N802 - official factory name, kept for readers comparing with upstream
    in_channels: int,
    norm_type: str = "group",
    num_groups: int = GROUP_NORM_GROUPS,
    eps: float = GROUP_NORM_EPS,
) -> nn.Module:
    """GroupNorm(32, eps 1e-6, affine) or, for norm_type="batch", BatchNorm (SyncBatchNorm upstream)."""
    if norm_type == "group":
        if in_channels % num_groups:
            raise ValueError(
                f"GroupNorm with {num_groups} groups needs a channel count divisible by {num_groups}, got "
                f"{in_channels}; check ch / ch_mult in the config"
            )
        return nn.GroupNorm(num_groups=num_groups, num_channels=in_channels, eps=eps, affine=True)
    if norm_type == "batch":
        # SyncBatchNorm upstream; same parameters and buffers, and identical in eval mode.
        return nn.BatchNorm2d(in_channels)
    raise ValueError(f"norm_type must be 'group' or 'batch', got {norm_type!r}")


class ResnetBlock(nn.Module):
    """norm-swish-conv3x3 twice plus a shortcut (1x1 `nin_shortcut`, or 3x3 `conv_shortcut`) when widths differ."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        conv_shortcut: bool = False,
        dropout: float = 0.0,
        norm_type: str = "group",
        num_groups: int = GROUP_NORM_GROUPS,
        eps: float = GROUP_NORM_EPS,
    ) -> None:
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        self.in_channels, self.out_channels = in_channels, out_channels
        self.use_conv_shortcut = conv_shortcut
        self.norm1 = Normalize(in_channels, norm_type, num_groups, eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.norm2 = Normalize(out_channels, norm_type, num_groups, eps)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1)
        if in_channels != out_channels:
            if conv_shortcut:
                self.conv_shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
            else:
                self.nin_shortcut = nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=1, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(nonlinearity(self.norm1(x)))
        h = self.conv2(self.dropout(nonlinearity(self.norm2(h))))
        if self.in_channels != self.out_channels:
            x = self.conv_shortcut(x) if self.use_conv_shortcut else self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head spatial self-attention over all h*w positions, with 1x1 q/k/v/proj_out convs."""

    def __init__(
        self,
        in_channels: int,
        norm_type: str = "group",
        num_groups: int = GROUP_NORM_GROUPS,
        eps: float = GROUP_NORM_EPS,
    ) -> None:
        super().__init__()
        self.norm = Normalize(in_channels, norm_type, num_groups, eps)
        self.q = nn.Conv2d(in_channels, in_channels, kernel_size=1)
        self.k = nn.Conv2d(in_channels, in_channels, kernel_size=1)
        self.v = nn.Conv2d(in_channels, in_channels, kernel_size=1)
        self.proj_out = nn.Conv2d(in_channels, in_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h_ = self.norm(x)
        b, c, h, w = h_.shape
        # softmax(q k^T C^-0.5) v in the official bmm order (not SDPA): same float32 rounding as upstream,
        # so near-tied codes in other configs resolve as the official code resolves them.
        q = self.q(h_).reshape(b, c, h * w).permute(0, 2, 1)
        k = self.k(h_).reshape(b, c, h * w)
        weights = F.softmax(torch.bmm(q, k) * (int(c) ** -0.5), dim=2)
        out = torch.bmm(self.v(h_).reshape(b, c, h * w), weights.permute(0, 2, 1)).reshape(b, c, h, w)
        return x + self.proj_out(out)


class Upsample(nn.Module):
    """Nearest x2, then a 3x3 conv (`with_conv`).

    `cast_to_bf16` reproduces Janus's copy: a non-float32 input is interpolated in float32 and the
    result cast to bfloat16 (Janus runs in bf16). Off by default: LlamaGen interpolates in the input dtype.
    """

    def __init__(self, in_channels: int, with_conv: bool = True, cast_to_bf16: bool = False) -> None:
        super().__init__()
        self.with_conv = with_conv
        self.cast_to_bf16 = cast_to_bf16
        if with_conv:
            self.conv = nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cast_to_bf16 and x.dtype != torch.float32:
            x = F.interpolate(x.float(), scale_factor=2.0, mode="nearest").to(torch.bfloat16)
        else:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x) if self.with_conv else x


class Downsample(nn.Module):
    """x1/2: zero-pad right and bottom by one, then a 3x3 stride-2 conv (`with_conv`), else 2x2 average pooling."""

    def __init__(self, in_channels: int, with_conv: bool = True) -> None:
        super().__init__()
        self.with_conv = with_conv
        if with_conv:
            self.conv = nn.Conv2d(in_channels, in_channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.with_conv:
            return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0.0))
        return F.avg_pool2d(x, kernel_size=2, stride=2)


class Encoder(nn.Module):
    """Image (B, in_channels, H, W) -> latent (B, z_channels, H / 2^(L-1), W / 2^(L-1)), L = len(ch_mult).

    Keys: `conv_in`, `conv_blocks.{level}.res.{j}` (+ `.attn.{j}` at the deepest level,
    `.downsample` on all but the deepest), `mid.{0,1,2}` (res, attn, res), `norm_out`, `conv_out`.
    """

    def __init__(
        self,
        in_channels: int = 3,
        ch: int = 128,
        ch_mult: Sequence[int] = (1, 1, 2, 2, 4),
        num_res_blocks: int = 2,
        norm_type: str = "group",
        dropout: float = 0.0,
        resamp_with_conv: bool = True,
        z_channels: int = 256,
        num_groups: int = GROUP_NORM_GROUPS,
        eps: float = GROUP_NORM_EPS,
    ) -> None:
        super().__init__()
        self.num_resolutions = len(ch_mult)
        self.num_res_blocks = num_res_blocks
        norm = {"norm_type": norm_type, "num_groups": num_groups, "eps": eps}
        self.conv_in = nn.Conv2d(in_channels, ch, kernel_size=3, stride=1, padding=1)

        in_ch_mult = (1, *ch_mult)
        self.conv_blocks = nn.ModuleList()
        block_in = ch
        for level in range(self.num_resolutions):
            block = nn.Module()
            block.res = nn.ModuleList()
            block.attn = nn.ModuleList()
            block_in, block_out = ch * in_ch_mult[level], ch * ch_mult[level]
            deepest = level == self.num_resolutions - 1
            for _ in range(num_res_blocks):
                block.res.append(ResnetBlock(block_in, block_out, dropout=dropout, **norm))
                block_in = block_out
                if deepest:
                    block.attn.append(AttnBlock(block_in, **norm))
            if not deepest:
                block.downsample = Downsample(block_in, resamp_with_conv)
            self.conv_blocks.append(block)

        self.mid = nn.ModuleList(
            [
                ResnetBlock(block_in, block_in, dropout=dropout, **norm),
                AttnBlock(block_in, **norm),
                ResnetBlock(block_in, block_in, dropout=dropout, **norm),
            ]
        )
        self.norm_out = Normalize(block_in, **norm)
        self.conv_out = nn.Conv2d(block_in, z_channels, kernel_size=3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level, block in enumerate(self.conv_blocks):
            for j in range(self.num_res_blocks):
                h = block.res[j](h)
                if len(block.attn) > 0:
                    h = block.attn[j](h)
            if level != self.num_resolutions - 1:
                h = block.downsample(h)
        for layer in self.mid:
            h = layer(h)
        return self.conv_out(nonlinearity(self.norm_out(h)))


class Decoder(nn.Module):
    """Latent (B, z_channels, h, w) -> image (B, out_channels, h * 2^(L-1), w * 2^(L-1)).

    Keys: `conv_in`, `mid.{0,1,2}`, `conv_blocks.{i}` in REVERSED level order (i = 0 is the deepest
    level, which carries `attn`), `num_res_blocks + 1` `res` per level, `.upsample` on all but the last
    (shallowest) entry, `norm_out`, `conv_out`. `upsample_bf16` turns on Janus's bf16 cast in `Upsample`.
    """

    def __init__(
        self,
        z_channels: int = 256,
        ch: int = 128,
        ch_mult: Sequence[int] = (1, 1, 2, 2, 4),
        num_res_blocks: int = 2,
        norm_type: str = "group",
        dropout: float = 0.0,
        resamp_with_conv: bool = True,
        out_channels: int = 3,
        num_groups: int = GROUP_NORM_GROUPS,
        eps: float = GROUP_NORM_EPS,
        upsample_bf16: bool = False,
    ) -> None:
        super().__init__()
        self.num_resolutions = len(ch_mult)
        self.num_res_blocks = num_res_blocks
        norm = {"norm_type": norm_type, "num_groups": num_groups, "eps": eps}

        block_in = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, block_in, kernel_size=3, stride=1, padding=1)
        self.mid = nn.ModuleList(
            [
                ResnetBlock(block_in, block_in, dropout=dropout, **norm),
                AttnBlock(block_in, **norm),
                ResnetBlock(block_in, block_in, dropout=dropout, **norm),
            ]
        )

        self.conv_blocks = nn.ModuleList()
        for level in reversed(range(self.num_resolutions)):
            block = nn.Module()
            block.res = nn.ModuleList()
            block.attn = nn.ModuleList()
            block_out = ch * ch_mult[level]
            for _ in range(num_res_blocks + 1):
                block.res.append(ResnetBlock(block_in, block_out, dropout=dropout, **norm))
                block_in = block_out
                if level == self.num_resolutions - 1:
                    block.attn.append(AttnBlock(block_in, **norm))
            if level != 0:
                block.upsample = Upsample(block_in, resamp_with_conv, cast_to_bf16=upsample_bf16)
            self.conv_blocks.append(block)

        self.norm_out = Normalize(block_in, **norm)
        self.conv_out = nn.Conv2d(block_in, out_channels, kernel_size=3, stride=1, padding=1)

    @property
    def last_layer(self) -> torch.Tensor:
        return self.conv_out.weight

    def set_upsample_bf16(self, enabled: bool) -> None:
        """Switch Janus's bf16 cast in every `Upsample` on or off."""
        for m in self.modules():
            if isinstance(m, Upsample):
                m.cast_to_bf16 = bool(enabled)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)
        for layer in self.mid:
            h = layer(h)
        for i, block in enumerate(self.conv_blocks):
            for j in range(self.num_res_blocks + 1):
                h = block.res[j](h)
                if len(block.attn) > 0:
                    h = block.attn[j](h)
            if i != self.num_resolutions - 1:
                h = block.upsample(h)
        return self.conv_out(nonlinearity(self.norm_out(h)))
