"""Multi-view Swin-window transformer (UniMatch's feature transformer generalised to N views).

Every block: windowed self-attention (no FFN), then windowed cross-attention whose keys/values are
the same window of all N-1 other views, followed by the FFN. Odd layers shift the windows by half a
window (Swin) with a -100 additive mask. Attribute names match UniMatch so its weights load.
"""

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint


def shifted_window_mask(h: int, w: int, num_splits: int, device: torch.device) -> Tensor:
    """Swin mask [K*K, L, L] (L = tokens per window): 0 inside a region, -100 across regions."""
    window_h, window_w = h // num_splits, w // num_splits
    shift_h, shift_w = window_h // 2, window_w // 2
    # Region label of each row/column after the cyclic shift: 0 body, 1 last window, 2 wrapped strip.
    row = torch.zeros(h, device=device)
    row[h - window_h:h - shift_h] = 1
    row[h - shift_h:] = 2
    col = torch.zeros(w, device=device)
    col[w - window_w:w - shift_w] = 1
    col[w - shift_w:] = 2
    labels = row[:, None] * 3 + col[None, :]
    windows = rearrange(labels, "(kh wh) (kw ww) -> (kh kw) (wh ww)", kh=num_splits, kw=num_splits)
    different = windows.unsqueeze(1) != windows.unsqueeze(2)
    return torch.zeros(different.shape, device=device).masked_fill(different, -100.0)


def _multiview_mask(mask: Tensor, num_key_views: int) -> Tensor:
    """Swin mask for keys laid out (view, token), reproducing the original's alignment.

    The original orders multi-view keys (token, view) but tiles the [L, L] mask view-major, so
    key (token p, view s) receives mask column (p * S + s) mod L. With one key view this is the
    usual mask; with more it is what the released multi-view weights were used with.
    """
    num_tokens = mask.shape[-1]
    token = torch.arange(num_tokens, device=mask.device)
    view = torch.arange(num_key_views, device=mask.device)
    columns = (token[None, :] * num_key_views + view[:, None]) % num_tokens  # [S, L]
    return mask[..., columns.flatten()]


ATTENTION_KINDS = ("sdpa", "original")


def attend(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None, kind: str) -> Tensor:
    """softmax(q k^T / sqrt(d) + mask) v over the last two dims. "sdpa": torch's fused kernels (flash /
    memory-efficient on CUDA, the fused CPU kernel); "original": UniMatch's explicit matmuls."""
    if kind == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    if kind != "original":
        raise ValueError(f"attention={kind!r}: expected one of {ATTENTION_KINDS}")
    scores = torch.matmul(q, k.transpose(-2, -1)) / q.shape[-1] ** 0.5
    if attn_mask is not None:
        scores = scores + attn_mask
    return torch.matmul(torch.softmax(scores, dim=-1), v)


def window_attention(query: Tensor, key: Tensor, value: Tensor, num_splits: int, shift: bool,
                     mask: Tensor | None, kind: str = "sdpa") -> Tensor:
    """Single-head attention inside K x K windows.

    query [N, H, W, C]; key, value [N, S, H, W, C] (S key views, concatenated per window);
    mask [K*K, L, L] applied when shift is set; kind as in `attend`. Returns [N, H, W, C].
    """
    n, h, w, c = query.shape
    num_key_views = key.shape[1]
    if shift:
        sh, sw = h // num_splits // 2, w // num_splits // 2
        query = torch.roll(query, shifts=(-sh, -sw), dims=(1, 2))
        key = torch.roll(key, shifts=(-sh, -sw), dims=(2, 3))
        value = torch.roll(value, shifts=(-sh, -sw), dims=(2, 3))
    split = dict(kh=num_splits, kw=num_splits)
    q = rearrange(query, "n (kh wh) (kw ww) c -> n (kh kw) (wh ww) c", **split)
    k = rearrange(key, "n s (kh wh) (kw ww) c -> n (kh kw) (s wh ww) c", **split)
    v = rearrange(value, "n s (kh wh) (kw ww) c -> n (kh kw) (s wh ww) c", **split)
    # The mask as [1, K*K, L, S*L]: torch's fused CPU kernel takes only a 4-D mask and silently falls
    # back to the unfused math path (twice the forward time) for the 3-D one.
    attn_mask = _multiview_mask(mask, num_key_views).to(q.dtype).unsqueeze(0) if shift else None
    out = attend(q, k, v, attn_mask, kind)
    out = rearrange(out, "n (kh kw) (wh ww) c -> n (kh wh) (kw ww) c", wh=h // num_splits, **split)
    if shift:
        out = torch.roll(out, shifts=(sh, sw), dims=(1, 2))
    return out


def other_views(x: Tensor, num_views: int) -> Tensor:
    """[(v b), ...] -> [(v b), v-1, ...]: for each view, the other views in increasing index."""
    per_view = rearrange(x, "(v b) ... -> v b ...", v=num_views)
    index = torch.tensor([[j for j in range(num_views) if j != i] for i in range(num_views)], device=x.device)
    return rearrange(per_view[index], "v s b ... -> (v b) s ...")


class TransformerLayer(nn.Module):
    """Post-norm attention layer: source + norm(merge(attn)) [+ FFN on concat(source, message)]."""

    def __init__(self, d_model: int, with_ffn: bool, ffn_dim_expansion: int = 4, attention: str = "sdpa") -> None:
        super().__init__()
        if attention not in ATTENTION_KINDS:
            raise ValueError(f"attention={attention!r}: expected one of {ATTENTION_KINDS}")
        self.attention = attention
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, d_model, bias=False)
        self.merge = nn.Linear(d_model, d_model, bias=False)
        self.norm1 = nn.LayerNorm(d_model)
        if with_ffn:
            hidden = 2 * d_model * ffn_dim_expansion
            self.mlp = nn.Sequential(
                nn.Linear(2 * d_model, hidden, bias=False), nn.GELU(), nn.Linear(hidden, d_model, bias=False)
            )
            self.norm2 = nn.LayerNorm(d_model)
        else:
            self.mlp = None

    def forward(self, source: Tensor, target: Tensor, num_views: int, cross: bool, num_splits: int,
                shift: bool, mask: Tensor | None) -> Tensor:
        """source, target [(v b), H, W, C]. Self: keys/values from target's own view; cross: from
        the other views of target (projected first, then gathered: same result, V-1 times cheaper)."""
        query, key, value = self.q_proj(source), self.k_proj(target), self.v_proj(target)
        if cross:
            key, value = other_views(key, num_views), other_views(value, num_views)
        else:
            key, value = key.unsqueeze(1), value.unsqueeze(1)
        message = self.norm1(self.merge(window_attention(query, key, value, num_splits, shift, mask, self.attention)))
        if self.mlp is not None:
            message = self.norm2(self.mlp(torch.cat([source, message], dim=-1)))
        return source + message


class TransformerBlock(nn.Module):
    def __init__(self, d_model: int, ffn_dim_expansion: int, no_cross_attn: bool, attention: str = "sdpa") -> None:
        super().__init__()
        # Without cross-attention the FFN moves into the self-attention layer (ablation).
        self.self_attn = TransformerLayer(d_model, no_cross_attn, ffn_dim_expansion, attention)
        self.cross_attn_ffn = None if no_cross_attn else TransformerLayer(d_model, True, ffn_dim_expansion, attention)

    def forward(self, x: Tensor, num_views: int, num_splits: int, shift: bool, mask: Tensor | None) -> Tensor:
        source = self.self_attn(x, x, num_views, False, num_splits, shift, mask)
        if self.cross_attn_ffn is None or num_views == 1:
            return source
        # As in UniMatch, the other views enter cross-attention as they were before this block's
        # self-attention (the block input), not after it.
        return self.cross_attn_ffn(source, x, num_views, True, num_splits, shift, mask)


class MultiViewFeatureTransformer(nn.Module):
    def __init__(self, num_layers: int = 6, d_model: int = 128, ffn_dim_expansion: int = 4,
                 no_cross_attn: bool = False, attention: str = "sdpa", checkpointing: bool = False) -> None:
        super().__init__()
        self.d_model = d_model
        self.checkpointing = checkpointing
        self.layers = nn.ModuleList(
            TransformerBlock(d_model, ffn_dim_expansion, no_cross_attn, attention) for _ in range(num_layers)
        )
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, features: list[Tensor], attn_splits: int) -> list[Tensor]:
        """features: one [B, C, H, W] per view -> same, after all layers."""
        num_views = len(features)
        b, c, h, w = features[0].shape
        if c != self.d_model:
            raise ValueError(f"transformer expects {self.d_model} feature channels, got {c}")
        if h % attn_splits or w % attn_splits:
            raise ValueError(
                f"feature map {h}x{w} is not divisible by multiview_trans_attn_split={attn_splits}; "
                "crop images to multiples of shim_patch_size * downscale_factor"
            )
        mask = shifted_window_mask(h, w, attn_splits, features[0].device) if attn_splits > 1 else None
        x = rearrange(torch.stack(features), "v b c h w -> (v b) h w c")
        for i, layer in enumerate(self.layers):
            shift = attn_splits > 1 and i % 2 == 1
            if self.checkpointing and torch.is_grad_enabled():
                x = checkpoint(layer, x, num_views, attn_splits, shift, mask, use_reentrant=False)
            else:
                x = layer(x, num_views, attn_splits, shift, mask)
        x = rearrange(x, "(v b) h w c -> v b c h w", v=num_views)
        return list(x.unbind(0))


def sine_position_embedding(h: int, w: int, channels: int, device: torch.device) -> Tensor:
    """DETR sine embedding [channels, h, w] (y half then x half), float32 as UniMatch computes it."""
    num_feats = channels // 2
    scale = 2 * math.pi
    ones = torch.ones(h, w, device=device)
    y = ones.cumsum(0, dtype=torch.float32)
    x = ones.cumsum(1, dtype=torch.float32)
    y = y / (y[-1:, :] + 1e-6) * scale
    x = x / (x[:, -1:] + 1e-6) * scale
    dim_t = torch.arange(num_feats, dtype=torch.float32, device=device)
    dim_t = 10000 ** (2 * (dim_t // 2) / num_feats)
    pos_x = x[..., None] / dim_t
    pos_y = y[..., None] / dim_t
    pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=-1).flatten(-2)
    pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=-1).flatten(-2)
    return torch.cat((pos_y, pos_x), dim=-1).permute(2, 0, 1)


def add_window_position(features: Tensor, attn_splits: int) -> Tensor:
    """Add the sine embedding of one attention window to every window. features [B, C, H, W]."""
    _, c, h, w = features.shape
    position = sine_position_embedding(h // attn_splits, w // attn_splits, c, features.device)
    return features + position.repeat(1, attn_splits, attn_splits).to(features.dtype)
