"""The zoo's standard architectures: shapes, parameter counts of the references, layout, gradients."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from radvar import zoo
from radvar.apps.architectures import Attention


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_parameter_counts_match_torchvision_and_timm():
    assert count(zoo.resnet18()) == 11_689_512  # torchvision.models.resnet18(), 1000 classes
    assert count(zoo.vit()) == 5_717_416  # timm vit_tiny_patch16_224


def test_resnet18_layout_and_shapes():
    model = zoo.resnet18(classes=7, width=8)
    names = dict(model.named_modules())
    for name in ("conv1", "bn1", "relu", "maxpool", "layer1.0.conv1", "layer2.0.downsample.0",
                 "layer2.0.downsample.1", "layer4.1.bn2", "avgpool", "fc"):
        assert name in names, name
    assert names["layer1.0"].downsample is None  # same shape: plain identity
    assert names["conv1"].kernel_size == (7, 7) and names["conv1"].stride == (2, 2)
    assert names["fc"].in_features == 64 and names["fc"].out_features == 7
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 7)
    assert sum(1 for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)) == 20


def test_vit_layout_and_shapes():
    model = zoo.vit(image=32, patch=8, embed=24, depth=2, heads=3, classes=5)
    assert model.pos_embed.shape == (1, 17, 24) and model.cls_token.shape == (1, 1, 24)
    names = dict(model.named_modules())
    for name in ("patch_embed.proj", "blocks.1.norm1", "blocks.1.attn.qkv", "blocks.1.attn.proj",
                 "blocks.1.norm2", "blocks.1.mlp.fc1", "blocks.1.mlp.act", "blocks.1.mlp.fc2", "norm", "head"):
        assert name in names, name
    assert model(torch.randn(3, 3, 32, 32)).shape == (3, 5)


def test_attention_is_softmax_qk_v():
    attn = Attention(12, 3).double()
    x = torch.randn(2, 5, 12, dtype=torch.float64)
    q, k, v = attn.qkv(x).split(12, dim=-1)
    heads = [F.softmax(q[..., h:h + 4] @ k[..., h:h + 4].transpose(1, 2) / math.sqrt(4), -1) @ v[..., h:h + 4]
             for h in (0, 4, 8)]
    torch.testing.assert_close(attn(x), attn.proj(torch.cat(heads, -1)))


@pytest.mark.parametrize("factory", [lambda: zoo.resnet18(classes=4, width=8),
                                     lambda: zoo.vit(image=16, patch=4, embed=12, depth=2, heads=2, classes=4)])
def test_every_parameter_gets_a_gradient(factory):
    model = factory()
    F.cross_entropy(model(torch.randn(2, 3, 16, 16)), torch.tensor([0, 3])).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("kwargs, match", [({"image": 30, "patch": 8}, "divisible by patch"),
                                           ({"embed": 20, "heads": 3}, "divisible by heads")])
def test_bad_vit_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        zoo.vit(**kwargs)


def test_same_function_as_torchvision_resnet18():
    models = pytest.importorskip("torchvision.models")
    ref = models.resnet18(num_classes=10).eval()
    ours = zoo.resnet18(classes=10).eval()
    ours.load_state_dict(ref.state_dict())  # strict: the same names and shapes
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(ours(x), ref(x))


def test_same_function_as_timm_vit_tiny():
    timm = pytest.importorskip("timm")
    ref = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10).eval()
    ours = zoo.vit(classes=10).eval()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 224, 224)
    torch.testing.assert_close(ours(x), ref(x))
