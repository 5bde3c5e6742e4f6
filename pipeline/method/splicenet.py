"""SpliceNet: one feed-forward Splice generator per domain, conditioned on the appearance image's DINO [CLS].

The architecture of the authors' TOG 2023 supplementary ("Disentangling Structure and Appearance in ViT Feature
Space", arXiv 2311.12193), who released no code:

  structure (B, 3, H, W) -> 1x1 conv to 32 ch
    -> 5 encoder levels: downsampling residual blocks (two 3x3 convs; a 1x1 conv on the residual path),
       64, 128, 256, 512, 1024 channels, NOT modulated
    -> 5 decoder levels: upsampling residual blocks, symmetric, whose 3x3 convs are weight-modulated (StyleGAN2) by
       the appearance code; each encoder level's output reaches the decoder through a resolution-preserving
       modulated residual block, concatenated to the decoder input at that resolution
    -> modulated 1x1 conv to RGB, sigmoid.
  [CLS] (B, 768) -> mapping MLP (2 x Linear 768 -> 768 + GELU) -> code (B, 768)
    -> one learned affine per modulated conv -> that conv's per-input-channel scales.
  LeakyReLU(0.2) throughout.

Choices the paper leaves open (and why):
- Demodulation as in StyleGAN2 (`demodulate`), computed per sample on the fly ("non-fused" form: scale the input,
  one shared convolution, scale the output), so a batch of B pairs is one convolution, not B.
- Equalised learning rate (StyleGAN2): weights ~ N(0, 1), scaled by 1/sqrt(fan_in) at run time, so Adam's lr 2e-3
  (the paper's, a StyleGAN2 value) moves every layer at the same relative rate. Affine biases start at 1.
- The [CLS] is normalised to unit RMS before the mapping MLP (`normalize_code`, as StyleGAN2 normalises z): the raw
  last-block [CLS] of a ViT has a large, backbone-dependent scale.
- Residual blocks as StyleGAN2's: a down block's first conv keeps the input's resolution and channels and its second
  runs after 2x2 average pooling (an up block mirrors it: first conv before bilinear upsampling), so the costly
  full-resolution convs have the fewest channels; sums scaled by 1/sqrt(2); no normalisation layers, so every
  sample's output is independent of its batch-mates.
- Any input size: the image is padded (replicate) on the bottom and right to a multiple of 32 and the output cropped
  back, so the output has the input's size, odd or even.

Checkpoints: one torch.save file (`save_net` / `load_net`), `{"format": FORMAT, "config", "model", "backbone",
"resolution", "step", "domains", ...}`, loadable with `torch.load(weights_only=True)`; `splice train-net --out OUT`
leaves the latest as OUT/NET_FILE. Reading one for inference (`checkpoint_file`, `read_checkpoint`,
`load_checkpoint_net`) takes a `read_bytes(url)` from the caller: no storage library here.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import BinaryIO

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import SpliceError
from pipeline.method.config import from_dict

FORMAT = "splicenet/1"  # a SpliceNet checkpoint file (save_net / load_net); checked in load_net only
NET_FILE = "net.pt"  # what `splice train-net --out OUT` leaves for inference: OUT/net.pt
PAD_MULTIPLE = 32  # 5 levels of 2x downsampling


@dataclass(frozen=True)
class SpliceNetConfig:
    width: float = 1.0  # channel multiplier over the paper's widths (tests use e.g. 1/16)
    code_dim: int = 768  # size of the appearance [CLS] (DINO ViT-B/8: 768)
    demodulate: bool = True  # StyleGAN2 weight demodulation of the modulated convs
    stem_channels: int = 32  # the input 1x1 conv's channels (paper: 32), times width
    channels: tuple[int, ...] = (64, 128, 256, 512, 1024)  # encoder levels' channels (paper), times width
    mapping_layers: int = 2  # layers of the mapping MLP (code_dim -> code_dim, GELU each)
    normalize_code: bool = True  # scale the [CLS] to unit RMS before the mapping MLP
    negative_slope: float = 0.2  # LeakyReLU slope

    def __post_init__(self):
        if not self.width > 0:
            raise ValueError(f"width must be > 0, got {self.width}")
        if self.code_dim < 1 or self.mapping_layers < 0 or len(self.channels) != 5:
            raise ValueError(
                f"invalid SpliceNet config: code_dim {self.code_dim}, mapping_layers "
                f"{self.mapping_layers}, channels {self.channels} (5 levels)"
            )

    def scaled(self, channels: int) -> int:
        return max(1, round(channels * self.width))

    @classmethod
    def from_dict(cls, values: dict) -> SpliceNetConfig:
        return from_dict(cls, values, what="SpliceNet option")


class EqualConv2d(nn.Module):
    """A conv with StyleGAN2's equalised learning rate: N(0, 1) weights scaled by 1/sqrt(fan_in) at run time."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.scale = 1 / math.sqrt(in_channels * kernel * kernel)
        self.padding = kernel // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, padding=self.padding)


class EqualLinear(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias_init: float = 0.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features))
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init)))
        self.scale = 1 / math.sqrt(in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.scale, self.bias)


class ModulatedConv2d(nn.Module):
    """StyleGAN2's modulated convolution: per-sample input-channel scales from the code, then demodulation.

    Computed as scale input -> one shared conv -> scale output (StyleGAN2's non-fused form, exact)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, code_dim: int, demodulate: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.affine = EqualLinear(code_dim, in_channels, bias_init=1.0)  # code -> this conv's modulation
        self.scale = 1 / math.sqrt(in_channels * kernel * kernel)
        self.padding = kernel // 2
        self.demodulate = demodulate

    def forward(self, x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        weight = self.weight * self.scale  # (O, I, k, k)
        style = self.affine(code)  # (B, I)
        x = F.conv2d(x * style[:, :, None, None], weight, padding=self.padding)  # (B, O, H, W)
        if self.demodulate:
            # 1 / ||w * s|| over (I, k, k), per sample and output channel: (B, O)
            norms = (style.square() @ weight.square().sum(dim=(2, 3)).t() + 1e-8).rsqrt()
            x = x * norms[:, :, None, None]
        return x + self.bias[None, :, None, None]


class DownBlock(nn.Module):
    """Encoder level, StyleGAN2's residual down block: 3x3 conv (in -> in), 2x average pooling, 3x3 conv (in -> out)
    at the lower resolution; on the residual path 2x average pooling and a 1x1 conv (in -> out)."""

    def __init__(self, in_channels: int, out_channels: int, slope: float):
        super().__init__()
        self.conv1 = EqualConv2d(in_channels, in_channels, 3)
        self.conv2 = EqualConv2d(in_channels, out_channels, 3)
        self.residual = EqualConv2d(in_channels, out_channels, 1, bias=False)
        self.slope = slope

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        main = F.avg_pool2d(F.leaky_relu(self.conv1(x), self.slope), 2)
        main = F.leaky_relu(self.conv2(main), self.slope)
        return (main + self.residual(F.avg_pool2d(x, 2))) / math.sqrt(2)


class UpBlock(nn.Module):
    """Decoder level, the down block's mirror: modulated 3x3 conv (in -> out) at the lower resolution, 2x bilinear
    upsampling, modulated 3x3 conv (out -> out); on the residual path a 1x1 conv (in -> out), then upsampling."""

    def __init__(self, in_channels: int, out_channels: int, code_dim: int, demodulate: bool, slope: float):
        super().__init__()
        self.conv1 = ModulatedConv2d(in_channels, out_channels, 3, code_dim, demodulate)
        self.conv2 = ModulatedConv2d(out_channels, out_channels, 3, code_dim, demodulate)
        self.residual = EqualConv2d(in_channels, out_channels, 1, bias=False)
        self.slope = slope

    def forward(self, x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        main = _upsample(F.leaky_relu(self.conv1(x, code), self.slope))
        main = F.leaky_relu(self.conv2(main, code), self.slope)
        return (main + _upsample(self.residual(x))) / math.sqrt(2)


def _upsample(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


class SkipBlock(nn.Module):
    """Skip path: a resolution-preserving residual block of two modulated 3x3 convs (identity residual)."""

    def __init__(self, channels: int, code_dim: int, demodulate: bool, slope: float):
        super().__init__()
        self.conv1 = ModulatedConv2d(channels, channels, 3, code_dim, demodulate)
        self.conv2 = ModulatedConv2d(channels, channels, 3, code_dim, demodulate)
        self.slope = slope

    def forward(self, x: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        main = F.leaky_relu(self.conv1(x, code), self.slope)
        main = F.leaky_relu(self.conv2(main, code), self.slope)
        return (main + x) / math.sqrt(2)


class SpliceNet(nn.Module):
    """G(structure, [CLS] of the appearance) -> the structure image in that appearance, in one forward pass."""

    def __init__(self, config: SpliceNetConfig = SpliceNetConfig()):
        super().__init__()
        self.config = config
        slope, dim, demod = config.negative_slope, config.code_dim, config.demodulate
        widths = [config.scaled(config.stem_channels)] + [config.scaled(c) for c in config.channels]  # 6 resolutions
        self.mapping = nn.ModuleList(EqualLinear(dim, dim) for _ in range(config.mapping_layers))
        self.stem = EqualConv2d(3, widths[0], 1)
        self.encoder = nn.ModuleList(DownBlock(widths[i], widths[i + 1], slope) for i in range(5))
        # skip paths at full resolution .. 1/16; the bottleneck (1/32) feeds the decoder directly
        self.skips = nn.ModuleList(SkipBlock(widths[i], dim, demod, slope) for i in range(5))
        # decoder level i upsamples 1/2^(i+1) -> 1/2^i; below the bottleneck its input is [previous level, skip]
        self.decoder = nn.ModuleList(
            UpBlock(widths[i + 1] * (1 if i == 4 else 2), widths[i], dim, demod, slope) for i in range(5)
        )
        self.to_rgb = ModulatedConv2d(widths[0] * 2, 3, 1, dim, demod)

    def code(self, cls: torch.Tensor) -> torch.Tensor:
        """The mapping MLP: appearance [CLS] (B, code_dim) -> appearance code (B, code_dim)."""
        x = cls.float()
        if self.config.normalize_code:
            x = x * (x.square().mean(dim=1, keepdim=True) + 1e-8).rsqrt()
        for layer in self.mapping:
            x = F.gelu(layer(x))
        return x

    def forward(self, structure: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
        """structure (B, 3, H, W) in [0, 1], cls (B or 1, code_dim) -> (B, 3, H, W) in [0, 1], any H, W >= 1."""
        batch, _, height, width = structure.shape
        code = self.code(cls)  # (B, D)
        if code.shape[0] != batch:
            code = code.expand(batch, -1)
        pad_h, pad_w = -height % PAD_MULTIPLE, -width % PAD_MULTIPLE
        x = F.pad(structure, (0, pad_w, 0, pad_h), mode="replicate") if pad_h or pad_w else structure
        features = [self.stem(x)]  # resolutions 1, 1/2, .., 1/32
        for block in self.encoder:
            features.append(block(features[-1]))
        x = features[-1]  # (B, C5, H/32, W/32)
        for level in reversed(range(5)):
            x = self.decoder[level](x, code)  # up to 1/2^level
            x = torch.cat([x, self.skips[level](features[level], code)], dim=1)
        out = torch.sigmoid(self.to_rgb(x, code))  # (B, 3, H', W')
        return out[:, :, :height, :width]


# ---------------------------------------------------------------------------------------------------- checkpoints


def save_net(model: SpliceNet, path_or_file: str | os.PathLike | BinaryIO, **meta) -> None:
    """Write `model` and `meta` (backbone, resolution, step, domains, ...) as one SpliceNet checkpoint file."""
    model = getattr(model, "module", model)  # a DDP-wrapped model saves its inner module
    state = {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}
    torch.save({"format": FORMAT, "config": asdict(model.config), "model": state, **meta}, path_or_file)


def load_net(
    data: bytes | str | os.PathLike, name: str | None = None, map_location: str | torch.device = "cpu"
) -> tuple[SpliceNet, dict]:
    """Read a SpliceNet checkpoint (file bytes or a local path) -> (model in eval mode, the rest of the file)."""
    name = name or (str(data) if not isinstance(data, (bytes, bytearray)) else "SpliceNet checkpoint")
    source = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
    try:
        checkpoint = torch.load(source, map_location=map_location, weights_only=True)
    except FileNotFoundError as exc:
        raise SpliceError(
            f"{name}: no such SpliceNet checkpoint; give the training output folder or its net.pt"
        ) from exc
    except Exception as exc:
        raise SpliceError(f"{name}: not a readable SpliceNet checkpoint ({type(exc).__name__}: {exc})") from exc
    found = checkpoint.get("format") if isinstance(checkpoint, dict) else None
    if found != FORMAT:
        raise SpliceError(
            f"{name}: format {found!r} is not a SpliceNet checkpoint (expected {FORMAT!r}); give the "
            f"net.pt that `splice train-net` wrote"
        )
    try:
        model = SpliceNet(SpliceNetConfig.from_dict(checkpoint["config"]))
        model.load_state_dict(checkpoint["model"])
    except (KeyError, ValueError, RuntimeError) as exc:
        raise SpliceError(f"{name}: SpliceNet checkpoint does not fit its own configuration ({exc})") from exc
    meta = {k: v for k, v in checkpoint.items() if k not in ("model",)}
    return model.to(map_location).eval(), meta


# -------------------------------------------------------------------------------------- reading one for inference


def checkpoint_file(url: str) -> str:
    """`--checkpoint OUT` and `--checkpoint OUT/net.pt` both mean OUT/net.pt: a URL whose last part ends in .pt or
    .pth is the file itself, anything else a training output folder. Local paths become absolute (workers have other
    working folders)."""
    stripped = url.rstrip("/") if "://" in url else os.path.abspath(os.path.expanduser(url))
    if stripped.rsplit("/", 1)[-1].endswith((".pt", ".pth")):
        return stripped
    return f"{stripped}/{NET_FILE}"


def read_checkpoint(url: str, read_bytes: Callable[[str], bytes]) -> tuple[bytes, str]:
    """The bytes of the checkpoint `url` names (see `checkpoint_file`) and their sha256; a clear error if absent."""
    path = checkpoint_file(url)
    try:
        data = read_bytes(path)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        raise SpliceError(
            f"SpliceNet checkpoint {path} does not exist: pass --checkpoint with a `splice train-net` "
            f"output folder (it holds {NET_FILE}) or the .pt file itself"
        ) from None
    return data, "sha256:" + hashlib.sha256(data).hexdigest()


def load_checkpoint_net(data: bytes, url: str) -> tuple[SpliceNet, dict]:
    """(net in eval mode, frozen; its meta) from checkpoint bytes; a clear error naming `url` if it is not one."""
    try:
        net, meta = load_net(data, name=url)
    except SpliceError as exc:  # names the file and what is wrong with it; one line of it (torch.load's run on)
        if len(str(exc).strip().splitlines()) <= 1:
            raise
        cause = type(exc.__cause__).__name__ if exc.__cause__ else "unreadable"
        raise SpliceError(
            f"{url}: not a readable SpliceNet checkpoint ({cause}): pass the net.pt that `splice train-net` wrote"
        ) from None
    except Exception as exc:  # noqa: BLE001  (whatever else the loader objects to, the user hears which file and why)
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        raise SpliceError(
            f"{url}: not a SpliceNet checkpoint ({reason}): pass the net.pt that `splice train-net` wrote"
        ) from None
    if not meta.get("backbone"):  # load_net has checked the format
        raise SpliceError(
            f"{url}: not a SpliceNet checkpoint of format {FORMAT} with a backbone (format "
            f"{meta.get('format')!r}, backbone {meta.get('backbone')!r}): pass the net.pt that "
            f"`splice train-net` wrote"
        )
    return net.eval().requires_grad_(False), meta
