"""Feature2Face training: conditional GAN from feature map + candidates to the real frame (LSP §4.1).

pix2pixHD recipe with the release's bugs fixed (LSP §5): a 2-scale PatchGAN with intermediate
features and 16 input channels, LSGAN, feature matching over intermediate layers, L1 x 100, and a
VGG19 perceptual loss when torchvision and its ImageNet weights are on disk (otherwise logged as off).
Not in the release: two terms on the mouth box, an extra L1 (--lambda_mouth) and an L1 of its pixel
differences (--lambda_grad), which keeps the edges of lips and teeth that L1 alone lets blur.
"""

from __future__ import annotations

import argparse
import logging
import math

import torch
import torch.nn.functional as F

from models.base_model import BaseModel
from models.losses import VGGPerceptualLoss, feature_matching_loss, multiscale_gan_loss
from models.networks import (
    FEATURE2FACE_GENERATORS,
    Feature2FaceG,
    Feature2FaceGConfig,
    MultiscaleDiscriminator,
    MultiscaleDiscriminatorConfig,
)
from models.networks.feature2face import MIN_DOWNS
from util.argtypes import non_negative_float, non_negative_int, positive_int
from util.log import warn_once

log = logging.getLogger("lsp")


class Feature2FaceModel(BaseModel):
    default_dataset_mode = "face"
    best_metric = ("PSNR", "max")
    init_weights_strip = ("module.", "netG.")  # the release's Feature2Face.pkl holds module.netG.*

    @staticmethod
    def modify_commandline_options(parser: argparse.ArgumentParser, is_train: bool) -> argparse.ArgumentParser:
        parser.add_argument("--size", type=str, default="normal", choices=tuple(FEATURE2FACE_GENERATORS),
                            help="generator variant (the release: large for May, normal for the others)")
        parser.add_argument("--ngf", type=positive_int, default=64, help="generator width")
        parser.add_argument("--num_downs", type=non_negative_int, default=0,
                            help="U-Net levels; 0 = as many as leave 2 px at the innermost level (8 at 512^2, as "
                                 "released; 7 at 256^2)")
        parser.add_argument("--ndf", type=positive_int, default=64, help="discriminator width")
        parser.add_argument("--n_layers_D", type=positive_int, default=3, help="stride-2 layers per PatchGAN")
        parser.add_argument("--num_D", type=positive_int, default=2, help="discriminator scales")
        parser.add_argument("--lambda_L1", type=non_negative_float, default=100.0, help="weight of the L1 loss")
        parser.add_argument("--lambda_feat", type=non_negative_float, default=10.0, help="weight of feature matching")
        parser.add_argument("--lambda_mouth", type=non_negative_float, default=100.0,
                            help="weight of an extra L1 over the mouth box (0 = the release's losses only); the "
                                 "release's code had such a term (weight 500) commented out")
        parser.add_argument("--lambda_grad", type=non_negative_float, default=100.0,
                            help="weight of an L1 between the pixel differences (horizontal and vertical) of the "
                                 "rendered and the real mouth box: the edges of lips and teeth, which L1 alone "
                                 "lets blur (0 = off; not in the release)")
        parser.add_argument("--lambda_vgg", type=non_negative_float, default=10.0,
                            help="weight of the VGG perceptual loss")
        parser.add_argument("--no_ganFeat", action="store_true", help="no discriminator feature-matching loss")
        parser.add_argument("--no_vgg", action="store_true", help="no VGG perceptual loss")
        parser.add_argument("--no_discriminator", action="store_true", help="train G with L1 (+ VGG) only")
        parser.add_argument("--ttur", action="store_true",
                            help="two time-scale update rule: G lr/2, D lr*2, Adam betas (0, 0.9)")
        parser.set_defaults(batch_size=1, lr=1e-4, beta1=0.5, beta2=0.999, lr_policy="linear", n_epochs=10,
                            n_epochs_decay=10, save_epoch_freq=1, print_freq=10, display_freq=100, val_freq=1)
        return parser

    def __init__(self, opt: argparse.Namespace) -> None:
        super().__init__(opt)
        self.visual_names = ["feature_map", "fake", "real"]
        self.model_names = ["Feature2Face"]
        g_cfg = Feature2FaceGConfig(size=opt.size, ngf=opt.ngf, num_downs=opt.num_downs or auto_num_downs(opt))
        self.netFeature2Face = Feature2FaceG(g_cfg).to(self.device)
        self.use_d = self.is_train and not opt.no_discriminator
        self.loss_names = ["G_L1"] + [f"G_{term}" for term, weight in (("mouth", opt.lambda_mouth),
                                                                         ("grad", opt.lambda_grad))
                                      if self.is_train and weight > 0]
        if self.use_d:
            d_cfg = MultiscaleDiscriminatorConfig(input_nc=g_cfg.input_nc + g_cfg.output_nc, ndf=opt.ndf,
                                                  n_layers=opt.n_layers_D, num_D=opt.num_D)
            self.netD = MultiscaleDiscriminator(d_cfg).to(self.device)
            self.model_names.append("D")
            self.loss_names += ["G_GAN"] + ([] if opt.no_ganFeat else ["G_FM"]) + ["D_real", "D_fake"]
        self.vgg = None
        if self.is_train and not opt.no_vgg and opt.lambda_vgg > 0:
            ok, reason = VGGPerceptualLoss.available()
            if ok:
                self.vgg = VGGPerceptualLoss().to(self.device)
                self.loss_names.append("G_VGG")
            else:
                warn_once(f"VGG perceptual loss is off: {reason}")
        if self.is_train:
            lr, betas = opt.lr, (opt.beta1, opt.beta2)
            lr_g, lr_d = (lr / 2, lr * 2) if opt.ttur else (lr, lr)
            betas = (0.0, 0.9) if opt.ttur else betas
            self.optimizer_G = torch.optim.Adam(self.netFeature2Face.parameters(), lr=lr_g, betas=betas)
            self.optimizers = [self.optimizer_G]
            if self.use_d:
                self.optimizer_D = torch.optim.Adam(self.netD.parameters(), lr=lr_d, betas=betas)
                self.optimizers.append(self.optimizer_D)

    def set_input(self, batch: dict) -> None:
        self.feature_map = batch["feature_map"].to(self.device)  # (B, 1, H, W) in {0, 1}
        self.candidates = batch["candidates"].to(self.device)  # (B, 12, H, W) in [-1, 1]
        self.real = batch["image"].to(self.device)  # (B, 3, H, W) in [-1, 1]
        self.mouth = mouth_mask(batch["mouth_box"], self.real.shape[-2:]).to(self.device) \
            if "mouth_box" in batch else None  # (B, 1, H, W) in {0, 1}

    def forward(self) -> None:
        self.input = torch.cat([self.feature_map, self.candidates], 1)
        self.fake = self.netFeature2Face(self.input)

    def backward_D(self) -> torch.Tensor:
        """LSGAN on real (-> 1) and detached fake (-> 0), averaged (the release doubled the real term)."""
        pairs = torch.cat([torch.cat([self.input, self.fake.detach()], 1), torch.cat([self.input, self.real], 1)])
        with torch.autocast(self.device.type, enabled=self.use_amp):
            pred = _float(self.netD(pairs))  # fake and real in one pass: one forward per backward (DDP)
        b = self.real.shape[0]
        self.loss_D_fake = multiscale_gan_loss([[t[:b] for t in scale] for scale in pred], False)
        self.loss_D_real = multiscale_gan_loss([[t[b:] for t in scale] for scale in pred], True)
        return 0.5 * (self.loss_D_fake + self.loss_D_real)

    def backward_G(self) -> torch.Tensor:
        self.loss_G_L1 = F.l1_loss(self.fake.float(), self.real) * self.opt.lambda_L1
        loss = self.loss_G_L1
        if self.opt.lambda_mouth > 0:
            self.loss_G_mouth = torch.zeros((), device=self.device) if self.mouth is None else \
                masked_l1(self.fake.float(), self.real, self.mouth) * self.opt.lambda_mouth
            loss = loss + self.loss_G_mouth
        if self.opt.lambda_grad > 0:
            self.loss_G_grad = torch.zeros((), device=self.device) if self.mouth is None else \
                masked_gradient_l1(self.fake.float(), self.real, self.mouth) * self.opt.lambda_grad
            loss = loss + self.loss_G_grad
        if self.use_d:
            with torch.autocast(self.device.type, enabled=self.use_amp):
                pred_fake = _float(self.netD(torch.cat([self.input, self.fake], 1)))
                with torch.no_grad():
                    pred_real = _float(self.netD(torch.cat([self.input, self.real], 1)))
            self.loss_G_GAN = multiscale_gan_loss(pred_fake, True)
            loss = loss + self.loss_G_GAN
            if not self.opt.no_ganFeat:
                self.loss_G_FM = feature_matching_loss(pred_fake, pred_real) * self.opt.lambda_feat
                loss = loss + self.loss_G_FM
        if self.vgg is not None:
            self.loss_G_VGG = self.vgg(self.fake.float(), self.real) * self.opt.lambda_vgg
            loss = loss + self.loss_G_VGG
        return loss

    @torch.no_grad()
    def current_metrics(self) -> dict[str, float]:
        """L1 and PSNR (dB) of the rendered frame against the real one (both in [0, 1]), and of its mouth box."""
        fake, real = (self.fake.float() + 1) / 2, (self.real + 1) / 2
        mse = F.mse_loss(fake, real).clamp(min=1e-10)
        out = {"L1": float(F.l1_loss(fake, real)), "PSNR": float(10 * torch.log10(1 / mse))}
        if self.mouth is not None:
            mouth_mse = (((fake - real) ** 2) * self.mouth).sum() / (self.mouth.sum() * 3)
            out["mouth_PSNR"] = float(10 * torch.log10(1 / mouth_mse.clamp(min=1e-10)))
        return out

    def optimize_parameters(self) -> None:
        with torch.autocast(self.device.type, enabled=self.use_amp):
            self.forward()
        if self.use_d:
            toggle = not self.distributed  # DDP keeps every parameter it was built with trainable
            if toggle:
                self.set_requires_grad(self.netD, True)
            self.optimizer_D.zero_grad(set_to_none=True)
            self.backward_step(self.backward_D(), self.optimizer_D)
            if toggle:
                self.set_requires_grad(self.netD, False)
        self.optimizer_G.zero_grad(set_to_none=True)
        self.backward_step(self.backward_G(), self.optimizer_G)
        self.scaler.update()


def mouth_mask(boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, 4) boxes (x0, y0, x1, y1) -> (B, 1, H, W) masks, 1 inside the box."""
    ys, xs = torch.arange(size[0])[:, None], torch.arange(size[1])[None, :]
    b = boxes[:, :, None, None]
    return ((xs >= b[:, 0]) & (xs < b[:, 2]) & (ys >= b[:, 1]) & (ys < b[:, 3])).float()[:, None]


def masked_l1(fake: torch.Tensor, real: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference over the masked pixels (all channels)."""
    return ((fake - real).abs() * mask).sum() / (mask.sum() * fake.shape[1]).clamp(min=1)


def masked_gradient_l1(fake: torch.Tensor, real: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """masked_l1 of the horizontal plus that of the vertical differences of neighbouring pixels, over the pairs
    whose both pixels are masked: the images' edges compared, blind to an offset of the whole box."""
    def diffs(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x[..., :, 1:] - x[..., :, :-1], x[..., 1:, :] - x[..., :-1, :]

    (fx, fy), (rx, ry) = diffs(fake), diffs(real)
    mx, my = mask[..., :, 1:] * mask[..., :, :-1], mask[..., 1:, :] * mask[..., :-1, :]
    return masked_l1(fx, rx, mx) + masked_l1(fy, ry, my)


def auto_num_downs(opt: argparse.Namespace) -> int:
    """U-Net depth for the identity's image size: innermost level 2 px (LSP: 512 px -> 8 levels)."""
    from datasets.base_dataset import identity_files
    from util.io import load_image_rgb

    side = min(load_image_rgb(identity_files(opt).candidate(0), "candidate image").shape[:2])
    return max(MIN_DOWNS, int(math.log2(side)) - 1)


def _float(outputs: list[list[torch.Tensor]]) -> list[list[torch.Tensor]]:
    """Discriminator outputs in float32 for the losses (autocast may give half precision)."""
    return [[t.float() for t in scale] for scale in outputs]
