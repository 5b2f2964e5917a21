"""Feature2Face generators: feature map + 4 candidate images -> RGB face (LSP §1.11).

* ``large`` / ``normal``: a U-Net whose every level carries residual blocks (2 or 1 per side), 3x3
  stride-2 convs down, nearest-neighbour x2 + 3x3 conv up, BatchNorm, no conv biases.
  At 512^2 with ngf 64 and 8 levels: 121.8 M / 76.2 M parameters, 124.9 / 83.0 GMAC per frame.
* ``small``: the classic pix2pix U-Net (4x4 convs, transposed convs up); 54.4 M parameters.

Input channels: the 1-channel line drawing plus 4 RGB candidates = 13 (the original's unused small
variant was built with 23; `input_nc` is a config field). Output in [-1, 1].
Module nesting reproduces the released state-dict keys (``model.model.4.model.5...``).

For inference, `Feature2FaceG.for_inference()` gives the same generator with each nearest x2 upsample +
3x3 conv as one `SubPixelConv` (the same output to float rounding, without the upsampled tensor).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from models.networks.blocks import ResidualBlock
from util.landmarks import NUM_CANDIDATES

FEATURE_MAP_CHANNELS = 1  # LSP §1.10: one-channel line drawing
MIN_DOWNS = 5  # outermost + 3 widening levels + innermost


@dataclass(frozen=True)
class Feature2FaceGConfig:
    """Generator variant and sizes; defaults are the released `large` generator's."""

    size: str = "large"
    input_nc: int = FEATURE_MAP_CHANNELS + 3 * NUM_CANDIDATES
    output_nc: int = 3
    ngf: int = 64
    num_downs: int = 8  # the image side must be divisible by 2**num_downs


class ResUnetBlock(nn.Module):
    """One U-Net level with `n_res` residual blocks on each side of the submodule."""

    def __init__(self, outer_nc: int, inner_nc: int, input_nc: int | None = None, submodule: nn.Module | None = None,
                 n_res: int = 2, outermost: bool = False) -> None:
        super().__init__()
        self.outermost = outermost
        innermost = submodule is None
        input_nc = outer_nc if input_nc is None else input_nc
        up_in = inner_nc if innermost else inner_nc * 2
        down: list[nn.Module] = [nn.Conv2d(input_nc, inner_nc, 3, stride=2, padding=1, bias=False)]
        if not (outermost or innermost):
            down.append(nn.BatchNorm2d(inner_nc))
        down += [nn.ReLU(True)] + [ResidualBlock(inner_nc) for _ in range(n_res)]
        up: list[nn.Module] = [nn.Upsample(scale_factor=2, mode="nearest"),
                               nn.Conv2d(up_in, outer_nc, 3, padding=1, bias=False)]
        if outermost:
            up.append(nn.Tanh())
        else:
            up += [nn.BatchNorm2d(outer_nc), nn.ReLU(True)] + [ResidualBlock(outer_nc) for _ in range(n_res)]
        middle = [] if innermost else [submodule]
        self.model = nn.Sequential(*down, *middle, *up)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) if self.outermost else torch.cat([x, self.model(x)], 1)


class SubPixelConv(nn.Module):
    """A nearest x2 upsample followed by a 3x3 conv (stride 1, padding 1), computed at the lower resolution.

    Output pixel (2i + a, 2j + b) of the upsampled conv sees input rows i - 1, i, i (a = 0) or i, i, i + 1
    (a = 1), and the same for columns; so each of the four output phases is a 3x3 conv of the input whose
    taps are sums of the original's (zero padding included, the upsampled border is the input's border).
    The four phases are one conv with 4x the output channels, interleaved by a pixel shuffle. Same MACs,
    but no upsampled tensor is written and read again. The example's 256² renderer on the 2-core CPU: 40 against
    49 ms per frame in torch (one thread), 9.4 against 13.3 ms as int8 ONNX (scripts/benchmark.py --onnx).
    """

    # the original's kernel rows (columns) each phase's tap at offset -1, 0, +1 sums
    PHASE_TAPS = {0: ((0,), (1, 2), ()), 1: ((), (0, 1), (2,))}

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        if conv.kernel_size != (3, 3) or conv.stride != (1, 1) or conv.padding != (1, 1) or conv.groups != 1 \
                or conv.dilation != (1, 1):
            raise ValueError("SubPixelConv folds a 3x3 conv with stride 1, padding 1 and no groups or dilation")
        w = conv.weight.detach()  # (O, I, 3, 3)
        out_c, in_c = w.shape[:2]
        folded = w.new_zeros(out_c, 2, 2, in_c, 3, 3)
        for a, rows in self.PHASE_TAPS.items():
            for b, cols in self.PHASE_TAPS.items():
                for du, us in enumerate(rows):
                    for dv, vs in enumerate(cols):
                        if us and vs:
                            folded[:, a, b, :, du, dv] = w[:, :, list(us)][:, :, :, list(vs)].sum((2, 3))
        self.conv = nn.Conv2d(in_c, 4 * out_c, 3, padding=1, bias=conv.bias is not None)
        self.conv.weight.data.copy_(folded.reshape(4 * out_c, in_c, 3, 3))  # channel 4o + 2a + b: pixel_shuffle's order
        if conv.bias is not None:
            self.conv.bias.data.copy_(conv.bias.detach().repeat_interleave(4))
        self.conv.to(w.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.pixel_shuffle(self.conv(x), 2)

    @torch.no_grad()
    def absorb(self, norm: nn.BatchNorm2d) -> None:
        """Fold the eval-mode BatchNorm that follows this layer into its conv: output channel o is conv
        channels 4o..4o+3 after the shuffle, so each of the four takes o's scale and shift. Exporters fold a
        BatchNorm into the conv right before it, but not across the pixel shuffle."""
        scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
        shift = norm.bias - norm.running_mean * scale
        bias = self.conv.bias if self.conv.bias is not None else torch.zeros_like(self.conv.weight[:, 0, 0, 0])
        conv = nn.Conv2d(self.conv.in_channels, self.conv.out_channels, 3, padding=1, bias=True).to(bias.device)
        conv.weight.copy_(self.conv.weight * scale.repeat_interleave(4)[:, None, None, None])
        conv.bias.copy_(bias * scale.repeat_interleave(4) + shift.repeat_interleave(4))
        self.conv = conv


def _foldable_norm(module: nn.Module, out_channels: int) -> bool:
    return isinstance(module, nn.BatchNorm2d) and not module.training and module.affine \
        and module.track_running_stats and module.num_features == out_channels


def fold_upsampling(net: nn.Module) -> nn.Module:
    """An eval-mode copy of `net` in which every nearest x2 Upsample directly followed by a 3x3 conv in a
    Sequential is one SubPixelConv, with the BatchNorm right after it (if any) folded in (the original is
    left as it is)."""
    net = copy.deepcopy(net).eval()
    for module in net.modules():
        if not isinstance(module, nn.Sequential):
            continue
        for i in range(len(module) - 1):
            up, conv = module[i], module[i + 1]
            if isinstance(up, nn.Upsample) and up.mode == "nearest" and up.scale_factor in (2, 2.0, (2.0, 2.0)) \
                    and isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3) and conv.stride == (1, 1) \
                    and conv.padding == (1, 1):
                module[i], module[i + 1] = nn.Identity(), SubPixelConv(conv)
                if i + 2 < len(module) and _foldable_norm(module[i + 2], conv.out_channels):
                    module[i + 1].absorb(module[i + 2])
                    module[i + 2] = nn.Identity()
    return net


class UnetBlock(nn.Module):
    """One level of the pix2pix U-Net (used by the `small` generator)."""

    def __init__(self, outer_nc: int, inner_nc: int, input_nc: int | None = None, submodule: nn.Module | None = None,
                 outermost: bool = False) -> None:
        super().__init__()
        self.outermost = outermost
        input_nc = outer_nc if input_nc is None else input_nc
        downconv = nn.Conv2d(input_nc, inner_nc, 4, stride=2, padding=1, bias=False)
        if outermost:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, 4, stride=2, padding=1)
            layers = [downconv, submodule, nn.ReLU(True), upconv, nn.Tanh()]
        elif submodule is None:  # innermost
            upconv = nn.ConvTranspose2d(inner_nc, outer_nc, 4, stride=2, padding=1, bias=False)
            layers = [nn.LeakyReLU(0.2, True), downconv, nn.ReLU(True), upconv, nn.BatchNorm2d(outer_nc)]
        else:
            upconv = nn.ConvTranspose2d(inner_nc * 2, outer_nc, 4, stride=2, padding=1, bias=False)
            layers = [nn.LeakyReLU(0.2, True), downconv, nn.BatchNorm2d(inner_nc), submodule,
                      nn.ReLU(True), upconv, nn.BatchNorm2d(outer_nc)]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) if self.outermost else torch.cat([x, self.model(x)], 1)


class Feature2FaceG(nn.Module):
    """(B, input_nc, H, W) -> (B, output_nc, H, W) in [-1, 1]; H and W divisible by 2**num_downs."""

    def __init__(self, cfg: Feature2FaceGConfig = Feature2FaceGConfig()) -> None:
        super().__init__()
        if cfg.size not in FEATURE2FACE_GENERATORS:
            raise ValueError(f"unknown Feature2Face size '{cfg.size}'; available: {', '.join(FEATURE2FACE_GENERATORS)}")
        if cfg.num_downs < MIN_DOWNS:
            raise ValueError(f"Feature2Face num_downs must be >= {MIN_DOWNS}, got {cfg.num_downs}")
        self.cfg = cfg
        block_cls, kwargs = FEATURE2FACE_GENERATORS[cfg.size]
        ngf = cfg.ngf
        block = block_cls(ngf * 8, ngf * 8, **kwargs)  # innermost
        for _ in range(cfg.num_downs - MIN_DOWNS):
            block = block_cls(ngf * 8, ngf * 8, submodule=block, **kwargs)
        for mult in (4, 2, 1):
            block = block_cls(ngf * mult, ngf * mult * 2, submodule=block, **kwargs)
        self.model = block_cls(cfg.output_nc, ngf, input_nc=cfg.input_nc, submodule=block, outermost=True, **kwargs)

    def for_inference(self) -> Feature2FaceG:
        """An eval-mode copy that computes the same frames faster: every upsample + conv as a SubPixelConv
        (see there). Not for training: its weights no longer have the release's names and shapes."""
        return fold_upsampling(self)  # an eval-mode copy

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        factor = 2**self.cfg.num_downs
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            return self.model(x)
        if x.shape[-1] % factor or x.shape[-2] % factor:
            raise ValueError(f"Feature2Face input {tuple(x.shape[-2:])} must be divisible by {factor} "
                             f"(2**num_downs with num_downs={self.cfg.num_downs})")
        if self.training and self.cfg.size != "small" and min(x.shape[-2:]) < 2 * factor and x.shape[0] == 1:
            raise ValueError(f"Feature2Face: {tuple(x.shape[-2:])} images with num_downs={self.cfg.num_downs} leave "
                             "1 px at the innermost level, where BatchNorm cannot train on one sample; "
                             f"use num_downs <= {self.cfg.num_downs - 1}")
        return self.model(x)


# Variants of the generator (config `Image2Image.size`): block class and its extra arguments.
FEATURE2FACE_GENERATORS: dict[str, tuple[type[nn.Module], dict]] = {
    "large": (ResUnetBlock, {"n_res": 2}),
    "normal": (ResUnetBlock, {"n_res": 1}),
    "small": (UnetBlock, {}),
}
