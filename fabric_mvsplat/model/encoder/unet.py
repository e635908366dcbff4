"""Post-norm 2D U-Net (LDM/guided-diffusion layout, timestep embedding removed) with
cross-view attention: tokens of all views of one scene attend jointly at the attention levels.

Inputs are `(v b) c h w` (view-major), as everywhere in the depth predictor.
"""

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in fp32 (stable under bf16 autocast), cast back to the input dtype."""

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            return super().forward(x.float()).type(x.dtype)


def normalization(channels: int) -> GroupNorm32:
    return GroupNorm32(8 if channels % 8 == 0 else 4, channels)


def zero_init(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """conv-GN-SiLU-conv-GN(zero init)-SiLU plus identity / 1x1 skip: starts as its skip path."""

    def __init__(self, channels: int, out_channels: int) -> None:
        super().__init__()
        self.in_layers = nn.Sequential(nn.Conv2d(channels, out_channels, 3, padding=1), normalization(out_channels), nn.SiLU())
        self.out_layers = nn.Sequential(
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
            zero_init(normalization(out_channels)),
            nn.SiLU(),
        )
        self.skip_connection = nn.Identity() if channels == out_channels else nn.Conv2d(channels, out_channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.skip_connection(x) + self.out_layers(self.in_layers(x))


class AttentionBlock(nn.Module):
    """Post-norm multi-head attention over the tokens of all views of a scene (32 channels/head)."""

    def __init__(self, channels: int, num_head_channels: int = 32, gradient_checkpointing: bool = True,
                 attention: str = "sdpa") -> None:
        super().__init__()
        if channels % num_head_channels:
            raise ValueError(f"U-Net attention: {channels} channels is not a multiple of {num_head_channels} per head")
        if attention not in ("sdpa", "original"):
            raise ValueError(f"U-Net attention={attention!r}: expected 'sdpa' or 'original'")
        self.num_heads = channels // num_head_channels
        self.gradient_checkpointing = gradient_checkpointing
        self.attention = attention
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)
        self.norm = zero_init(normalization(channels))

    def forward(self, x: Tensor, num_views: int) -> Tensor:
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint(self._forward, x, num_views, use_reentrant=False)
        return self._forward(x, num_views)

    def _forward(self, x: Tensor, num_views: int) -> Tensor:
        vb, c, h, w = x.shape
        tokens = x.reshape(vb, c, h * w)
        qkv = self.qkv(tokens)
        # "Legacy" head layout: channels are (head, q/k/v, head_dim).
        q, k, v = rearrange(qkv, "(v b) (n three d) t -> three b n (v t) d", v=num_views, n=self.num_heads, three=3)
        if self.attention == "sdpa":
            out = F.scaled_dot_product_attention(q, k, v)
        else:  # the original's QKVAttentionLegacy: both sides scaled by d^-1/4, softmax in fp32
            scale = q.shape[-1] ** -0.25
            weight = torch.matmul(q * scale, (k * scale).transpose(-2, -1))
            out = torch.matmul(torch.softmax(weight.float(), dim=-1).type(weight.dtype), v)
        out = rearrange(out, "b n (v t) d -> (v b) (n d) t", v=num_views)
        return (tokens + self.norm(self.proj_out(out))).reshape(vb, c, h, w)


class Downsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class Chain(nn.ModuleList):
    """Sequential that hands the view count to the attention blocks."""

    def forward(self, x: Tensor, num_views: int) -> Tensor:
        for module in self:
            x = module(x, num_views) if isinstance(module, AttentionBlock) else module(x)
        return x


class UNetModel(nn.Module):
    def __init__(self, channels: int, attention_resolutions: list[int], channel_mult: list[int], *,
                 num_res_blocks: int = 1, num_head_channels: int = 32, gradient_checkpointing: bool = True,
                 attention_kind: str = "sdpa") -> None:
        """channels in, at the first level (`channel_mult` scales it per level) and out: MVSplat's two U-Nets
        use one width for all three."""
        super().__init__()
        in_channels = model_channels = out_channels = channels

        def attention(ch: int) -> AttentionBlock:
            return AttentionBlock(ch, num_head_channels, gradient_checkpointing, attention_kind)

        ch = model_channels
        self.input_blocks = nn.ModuleList([Chain([nn.Conv2d(in_channels, ch, 3, padding=1)])])
        skip_channels = [ch]
        ds = 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, mult * model_channels)]
                ch = mult * model_channels
                if ds in attention_resolutions:
                    layers.append(attention(ch))
                self.input_blocks.append(Chain(layers))
                skip_channels.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(Chain([Downsample(ch)]))
                skip_channels.append(ch)
                ds *= 2

        self.middle_block = Chain([ResBlock(ch, ch), nn.Identity(), ResBlock(ch, ch)])

        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                layers = [ResBlock(ch + skip_channels.pop(), model_channels * mult)]
                ch = model_channels * mult
                if ds in attention_resolutions:
                    layers.append(attention(ch))
                if level and i == num_res_blocks:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(Chain(layers))

        self.out = nn.Sequential(nn.Conv2d(ch, out_channels, 3, padding=1), normalization(out_channels), nn.SiLU())

    def forward(self, x: Tensor, num_views: int) -> Tensor:
        """x [(v b), C, H, W] with H, W divisible by 2^(levels-1)."""
        skips = []
        for block in self.input_blocks:
            x = block(x, num_views)
            skips.append(x)
        x = self.middle_block(x, num_views)
        for block in self.output_blocks:
            x = block(torch.cat([x, skips.pop()], dim=1), num_views)
        return self.out(x)


class ViewSequential(nn.Sequential):
    """nn.Sequential whose U-Net members also receive the view count."""

    def forward(self, x: Tensor, num_views: int) -> Tensor:
        for module in self:
            x = module(x, num_views) if isinstance(module, UNetModel) else module(x)
        return x
