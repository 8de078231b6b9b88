"""The CascadeVAE encoder / decoder for 64x64 binary images (Jeong & Song, ICML 2019).

Shape legend:
    B  batch size
    M  continuous latent dims (`num_continuous`, m; dSprites: 6)
    K  discrete categories (`num_categories`, S; dSprites: 3; 0 for CascadeVAE-C)
    H, W  image height and width (64)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainer.core.unary import unary_matrix

IMAGE_SIZE = 64
# 4x4 kernels with stride 2 and padding 1 halve (conv) or double (transposed conv) the side,
# which is exactly what TensorFlow's 'same' padding gives for these sizes.
_KERNEL, _STRIDE, _PAD = 4, 2, 1


def _conv(in_ch: int, out_ch: int) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, _KERNEL, stride=_STRIDE, padding=_PAD)


def _deconv(in_ch: int, out_ch: int) -> nn.ConvTranspose2d:
    return nn.ConvTranspose2d(in_ch, out_ch, _KERNEL, stride=_STRIDE, padding=_PAD)


class CascadeVAE(nn.Module):
    """Encoder q(z|x) and decoder p(x|z, d) with the authors' 64x64 architecture.

    Encoder: conv 32-32-64-64 (4x4, stride 2, ReLU; 64 -> 4), flatten, dense 256 + ReLU,
    dense 2M; mu = first M outputs, sigma = softplus(last M).
    Decoder on concat(z, d): dense 256 + ReLU, dense 4*4*64 + ReLU, transposed conv 64-32-32
    (ReLU) and a last transposed conv to 1 channel giving logits (4 -> 8 -> 16 -> 32 -> 64).

    Initialisation as the authors' TF-slim layers: He-normal (std sqrt(2 / fan_in)) for every
    convolution and transposed convolution kernel, Glorot-uniform for dense weight matrices,
    zeros for all biases.
    """

    def __init__(self, num_continuous: int = 6, num_categories: int = 3) -> None:
        super().__init__()
        if not isinstance(num_continuous, int) or num_continuous < 1:
            raise ValueError(f"num_continuous must be an int >= 1, got {num_continuous!r}")
        if not isinstance(num_categories, int) or num_categories < 0:
            raise ValueError(f"num_categories must be an int >= 0, got {num_categories!r}")
        self.num_continuous = num_continuous
        self.num_categories = num_categories

        self.encoder = nn.Sequential(
            _conv(1, 32), nn.ReLU(),  # 64 -> 32
            _conv(32, 32), nn.ReLU(),  # 32 -> 16
            _conv(32, 64), nn.ReLU(),  # 16 -> 8
            _conv(64, 64), nn.ReLU(),  # 8 -> 4
            nn.Flatten(),
            nn.Linear(4 * 4 * 64, 256), nn.ReLU(),
            nn.Linear(256, 2 * num_continuous),
        )  # fmt: skip
        self.decoder = nn.Sequential(
            nn.Linear(num_continuous + num_categories, 256), nn.ReLU(),
            nn.Linear(256, 4 * 4 * 64), nn.ReLU(),
            nn.Unflatten(1, (64, 4, 4)),
            _deconv(64, 64), nn.ReLU(),  # 4 -> 8
            _deconv(64, 32), nn.ReLU(),  # 8 -> 16
            _deconv(32, 32), nn.ReLU(),  # 16 -> 32
            _deconv(32, 1),  # 32 -> 64, logits
        )  # fmt: skip
        self._init_weights()

    def _init_weights(self) -> None:
        for layer in self.modules():
            if isinstance(layer, nn.Conv2d | nn.ConvTranspose2d):
                # torch takes fan_in of a transposed conv as out_channels * 4 * 4, as TF's
                # variance-scaling initialiser does for a conv2d_transpose kernel.
                nn.init.kaiming_normal_(layer.weight, mode="fan_in", nonlinearity="relu")
            elif isinstance(layer, nn.Linear):
                nn.init.xavier_uniform_(layer.weight)
            else:
                continue
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)

    def penalised_weights(self) -> list[Tensor]:
        """The tensors under the L2 penalty: every conv / transposed-conv kernel and every dense
        weight matrix (12 tensors). Biases are not penalised (as the authors' slim
        `weights_regularizer`)."""
        return [
            layer.weight
            for layer in self.modules()
            if isinstance(layer, nn.Conv2d | nn.ConvTranspose2d | nn.Linear)
        ]

    def weight_penalty(self) -> Tensor:
        """0.5 * sum of w^2 over `penalised_weights()`, a scalar. Unscaled: the train step
        multiplies it by the coefficient (authors: 4e-5) or leaves it out when that is 0."""
        return 0.5 * torch.stack([w.pow(2).sum() for w in self.penalised_weights()]).sum()

    def encode(self, x_B1HW: Tensor) -> tuple[Tensor, Tensor]:
        """x_B1HW float in [0, 1] -> (mu_BM, sigma_BM), sigma > 0."""
        h_B2M = self.encoder(x_B1HW)
        mu_BM, pre_sigma_BM = h_B2M.split(self.num_continuous, dim=1)
        return mu_BM, F.softplus(pre_sigma_BM)

    def decode(self, z_BM: Tensor, d_BK: Tensor | None) -> Tensor:
        """Logits (B, 1, 64, 64) of p(x | z, d). d_BK: one-hot float rows or zeros; None means
        zeros (no category chosen yet). CascadeVAE-C (K = 0) decodes z alone."""
        if d_BK is None:
            d_BK = z_BM.new_zeros(z_BM.shape[0], self.num_categories)
        if d_BK.shape != (z_BM.shape[0], self.num_categories):
            raise ValueError(
                f"d_BK must have shape {(z_BM.shape[0], self.num_categories)}, "
                f"got {tuple(d_BK.shape)}"
            )
        return self.decoder(torch.cat([z_BM, d_BK.to(z_BM.dtype)], dim=1))

    def encode_sample(self, x_B1HW: Tensor, eps_BM: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(mu_BM, sigma_BM, z_BM = mu + sigma * eps): one encoder pass and the sample."""
        mu_BM, sigma_BM = self.encode(x_B1HW)
        return mu_BM, sigma_BM, mu_BM + sigma_BM * eps_BM

    def forward(self, z_BM: Tensor, d_BK: Tensor | None) -> Tensor:
        """The decoding, the part of a step that runs inside DistributedDataParallel's forward.

        The train step encodes first (`encode_sample`), chooses the codes from the unary matrix
        of that z, then calls the (wrapped) model: the encoder's gradients flow back through z,
        and DDP's per-parameter hooks all-reduce them with the decoder's.
        """
        return self.decode(z_BM, d_BK)

    @torch.no_grad()
    def infer_codes(self, z_BM: Tensor, x_B1HW: Tensor) -> Tensor:
        """(B,) int64 category of each image for evaluation and pictures: the one whose decoding
        of z reconstructs x best (argmin of the unary matrix; the first minimum on ties)."""
        return unary_matrix(self, z_BM, x_B1HW).argmin(dim=1)


class JointVAE(CascadeVAE):
    """JointVAE (Dupont, NeurIPS 2018) on the same encoder and decoder: the encoder's last layer
    also gives K logits alpha of q(c|x); training decodes concat(z, c) with c a Gumbel-softmax
    relaxation of one-hot(c) at `temperature` (Dupont: 0.67); evaluation takes argmax alpha."""

    def __init__(
        self, num_continuous: int = 6, num_categories: int = 3, temperature: float = 0.67
    ) -> None:
        super().__init__(num_continuous, num_categories)
        if num_categories < 2:
            raise ValueError(f"JointVAE needs num_categories >= 2, got {num_categories}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        self.temperature = temperature
        last = self.encoder[-1]
        assert isinstance(last, nn.Linear)
        head = nn.Linear(last.in_features, 2 * num_continuous + num_categories)
        nn.init.xavier_uniform_(head.weight)
        nn.init.zeros_(head.bias)
        self.encoder[-1] = head

    def encode_all(self, x_B1HW: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """x -> (mu_BM, sigma_BM, alpha_BK)."""
        h_BO = self.encoder(x_B1HW)
        m = self.num_continuous
        mu_BM, pre_sigma_BM, alpha_BK = h_BO.split([m, m, self.num_categories], dim=1)
        return mu_BM, F.softplus(pre_sigma_BM), alpha_BK

    def encode(self, x_B1HW: Tensor) -> tuple[Tensor, Tensor]:
        mu_BM, sigma_BM, _ = self.encode_all(x_B1HW)
        return mu_BM, sigma_BM

    def relaxed_code(self, alpha_BK: Tensor, uniform_BK: Tensor) -> Tensor:
        """(B, K) Gumbel-softmax sample of q(c|x) at the model's temperature. uniform_BK: U(0, 1)
        noise drawn by the caller (reproducible)."""
        gumbel_BK = -torch.log(-torch.log(uniform_BK.clamp(1e-12, 1.0 - 1e-7)))
        return F.softmax((F.log_softmax(alpha_BK, dim=1) + gumbel_BK) / self.temperature, dim=1)

    @torch.no_grad()
    def infer_codes(self, z_BM: Tensor, x_B1HW: Tensor) -> Tensor:
        """(B,) argmax of q(c|x); z is not needed (the encoder decides the category)."""
        return self.encode_all(x_B1HW)[2].argmax(dim=1)
