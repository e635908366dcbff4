"""UniMatch CNN + multi-view transformer: per-view features at 1/4 (or 1/8) resolution."""

import torch
from einops import rearrange
from torch import Tensor, nn

from .transformer import MultiViewFeatureTransformer, add_window_position

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ResidualBlock(nn.Module):
    """conv-IN-ReLU-conv-IN-ReLU + (1x1 conv + IN) skip when the shape changes, then ReLU."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.relu = nn.ReLU()
        self.norm1 = nn.InstanceNorm2d(planes)
        self.norm2 = nn.InstanceNorm2d(planes)
        if stride == 1 and in_planes == planes:
            self.downsample = None
        else:
            self.downsample = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride), nn.InstanceNorm2d(planes))

    def forward(self, x: Tensor) -> Tensor:
        y = self.relu(self.norm1(self.conv1(x)))
        y = self.relu(self.norm2(self.conv2(y)))
        if self.downsample is not None:
            x = self.downsample(x)
        return self.relu(x + y)


class CNNEncoder(nn.Module):
    """Stem (1/2) -> 64 -> 96 (1/4) -> 128 (1/4, or 1/8 with stride 2) -> 1x1 to output_dim."""

    def __init__(self, output_dim: int = 128, downscale_factor: int = 4) -> None:
        super().__init__()
        dims = (64, 96, 128)
        self.conv1 = nn.Conv2d(3, dims[0], 7, stride=2, padding=3, bias=False)
        self.norm1 = nn.InstanceNorm2d(dims[0])
        self.relu1 = nn.ReLU()
        self.layer1 = nn.Sequential(ResidualBlock(dims[0], dims[0]), ResidualBlock(dims[0], dims[0]))
        self.layer2 = nn.Sequential(ResidualBlock(dims[0], dims[1], stride=2), ResidualBlock(dims[1], dims[1]))
        last_stride = 2 if downscale_factor == 8 else 1
        self.layer3 = nn.Sequential(ResidualBlock(dims[1], dims[2], stride=last_stride), ResidualBlock(dims[2], dims[2]))
        self.conv2 = nn.Conv2d(dims[2], output_dim, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, images: Tensor) -> Tensor:
        """images [N, 3, H, W] ImageNet-normalised -> [N, output_dim, H/ds, W/ds]."""
        x = self.relu1(self.norm1(self.conv1(images)))
        return self.conv2(self.layer3(self.layer2(self.layer1(x))))


class BackboneMultiview(nn.Module):
    def __init__(self, feature_channels: int = 128, downscale_factor: int = 4, no_cross_attn: bool = False,
                 attention: str = "sdpa", checkpointing: bool = False) -> None:
        super().__init__()
        self.feature_channels = feature_channels
        self.backbone = CNNEncoder(feature_channels, downscale_factor)
        self.transformer = MultiViewFeatureTransformer(6, feature_channels, 4, no_cross_attn, attention, checkpointing)

    def forward(self, images: Tensor, attn_splits: int) -> tuple[Tensor, Tensor]:
        """images [B, V, 3, H, W] in [0, 1] -> (transformer features, CNN features), each [B, V, C, h, w]."""
        b, v = images.shape[:2]
        mean = images.new_tensor(IMAGENET_MEAN).view(3, 1, 1)
        std = images.new_tensor(IMAGENET_STD).view(3, 1, 1)
        cnn = self.backbone(rearrange((images - mean) / std, "b v c h w -> (b v) c h w"))
        cnn = rearrange(cnn, "(b v) c h w -> b v c h w", b=b, v=v)
        with_position = [add_window_position(view, attn_splits) for view in cnn.unbind(1)]
        trans = torch.stack(self.transformer(with_position, attn_splits), dim=1)
        return trans, cnn
