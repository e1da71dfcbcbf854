"""Standard architectures with random weights, for measuring radvar on the models people train.

* :func:`resnet18` — the ResNet-18 of He et al. (2016, "Deep Residual Learning for Image
  Recognition") in torchvision's layout and parameter names: ``conv1`` 7x7 stride 2, ``bn1``,
  ``relu``, ``maxpool`` 3x3 stride 2, ``layer1``..``layer4`` of two :class:`BasicBlock` each
  (widths w, 2w, 4w, 8w; a 1x1 conv + BatchNorm ``downsample`` where the shape changes),
  ``avgpool``, ``fc``. With ``width=64, classes=1000`` it has 11,689,512 parameters, as
  ``torchvision.models.resnet18()``.
* :func:`vit` — the Vision Transformer of Dosovitskiy et al. (2021, "An Image is Worth 16x16
  Words") in timm's layout and parameter names: ``patch_embed.proj`` conv, ``cls_token``,
  ``pos_embed``, ``blocks`` of pre-norm :class:`Block` (LayerNorm -> :class:`Attention` ->
  residual, LayerNorm -> :class:`Mlp` -> residual), ``norm``, ``head`` on the class token.
  The defaults are ViT-tiny/16 at 224x224 (embed 192, depth 12, heads 3): 5,717,416
  parameters, as ``timm.create_model("vit_tiny_patch16_224")``.

Neither downloads anything; the weights are the modules' default random initialisation
(timm's truncated-normal init for the tokens).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _conv_bn(cin: int, cout: int, kernel: int, stride: int) -> tuple[nn.Conv2d, nn.BatchNorm2d]:
    return nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, bias=False), nn.BatchNorm2d(cout)


class BasicBlock(nn.Module):
    """Two 3x3 conv + BatchNorm with ReLU, plus the (downsampled) input: torchvision's BasicBlock."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(cin, cout, 3, stride)
        self.relu = nn.ReLU(inplace=True)
        self.conv2, self.bn2 = _conv_bn(cout, cout, 3, 1)
        self.downsample = nn.Sequential(*_conv_bn(cin, cout, 1, stride)) if stride != 1 or cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """ResNet of :class:`BasicBlock` stages (torchvision's ``ResNet`` for BasicBlock)."""

    def __init__(self, blocks: tuple[int, ...] = (2, 2, 2, 2), classes: int = 1000, width: int = 64,
                 in_channels: int = 3):
        super().__init__()
        self.conv1, self.bn1 = _conv_bn(in_channels, width, 7, 2)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = width
        for i, count in enumerate(blocks):
            cout = width * 2 ** i
            stage = [BasicBlock(cin, cout, 1 if i == 0 else 2)] + [BasicBlock(cout, cout) for _ in range(count - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
            cin = cout
        self.depth = len(blocks)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(self.depth):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(classes: int = 1000, width: int = 64, in_channels: int = 3) -> ResNet:
    """ResNet-18: four stages of two BasicBlocks, widths ``width``·(1, 2, 4, 8)."""
    return ResNet((2, 2, 2, 2), classes, width, in_channels)


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch`` x ``patch`` patches -> ``embed`` features by one strided conv."""

    def __init__(self, image: int, patch: int, in_channels: int, embed: int):
        super().__init__()
        if image % patch:
            raise ValueError(f"vit: image ({image}) must be divisible by patch ({patch})")
        self.num_patches = (image // patch) ** 2
        self.proj = nn.Conv2d(in_channels, embed, patch, patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, N, embed)


class Attention(nn.Module):
    """Multi-head self-attention: one ``qkv`` Linear, ``F.scaled_dot_product_attention``, ``proj``."""

    def __init__(self, embed: int, heads: int):
        super().__init__()
        if embed % heads:
            raise ValueError(f"vit: embed ({embed}) must be divisible by heads ({heads})")
        self.heads = heads
        self.qkv = nn.Linear(embed, 3 * embed)
        self.proj = nn.Linear(embed, embed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    """``fc1`` -> GELU -> ``fc2``."""

    def __init__(self, embed: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(embed, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, embed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, embed: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(embed, eps=1e-6)
        self.attn = Attention(embed, heads)
        self.norm2 = nn.LayerNorm(embed, eps=1e-6)
        self.mlp = Mlp(embed, int(embed * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """ViT classifying from the class token (timm's ``VisionTransformer``, global_pool='token')."""

    def __init__(self, image: int = 224, patch: int = 16, embed: int = 192, depth: int = 12, heads: int = 3,
                 mlp_ratio: float = 4.0, classes: int = 1000, in_channels: int = 3):
        super().__init__()
        self.patch_embed = PatchEmbed(image, patch, in_channels, embed)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed))
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 1, embed))
        self.blocks = nn.Sequential(*[Block(embed, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed, eps=1e-6)
        self.head = nn.Linear(embed, classes)
        with torch.no_grad():
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
            nn.init.normal_(self.cls_token, std=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


def vit(image: int = 224, patch: int = 16, embed: int = 192, depth: int = 12, heads: int = 3,
        mlp_ratio: float = 4.0, classes: int = 1000, in_channels: int = 3) -> VisionTransformer:
    """A ViT; the defaults are ViT-tiny/16 at 224x224 (timm's ``vit_tiny_patch16_224``)."""
    return VisionTransformer(image, patch, embed, depth, heads, mlp_ratio, classes, in_channels)
