"""The model as a representer: a private, inference-tuned copy of a CascadeVAE that maps image
indices to (mu, sigma, discrete code) batch by batch. The only torch code of the package.

Shape legend:
    N  images of a request           U  unique indices of a request
    B  batch of the encoder          M  continuous latent dims
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from trainer.core.model import CascadeVAE
from trainer.data.dsprites import DSprites
from trainer.eval.options import EvalConfig
from trainer.eval.types import Representation, Representer

DEFAULT_BATCH_SIZE = EvalConfig.model_fields["batch_size"].default


class ModelRepresenter(Representer):
    """Representations from a CascadeVAE, batch by batch, in eval mode under torch.no_grad.

    Works on a private copy of the model: the caller's model (often mid-training) keeps its mode,
    device and memory layout. The copy is tuned for inference without changing what it
    computes: channels_last layout on CPU (about 1.5x faster for these convolutions here) and
    in-place ReLUs. Repeated indices in a request are computed once.
    `code_images` counts the images whose discrete code was computed (the decoder runs K times
    for each), for cost reports.
    """

    def __init__(
        self,
        model: CascadeVAE,
        dataset: DSprites,
        device: str | torch.device = "cpu",
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device)
        self.dataset = dataset
        self.batch_size = batch_size
        self.channels_last = self.device.type == "cpu"
        net = copy.deepcopy(model).to(self.device).eval().requires_grad_(False)
        if self.channels_last:
            net = net.to(memory_format=torch.channels_last)
        for layer in net.modules():
            if isinstance(layer, torch.nn.ReLU):
                layer.inplace = True  # same values, less memory traffic (15 % less CPU time)
        self.model = net
        self.num_continuous = int(model.num_continuous)
        self.has_codes = int(model.num_categories) > 0
        self.num_categories = int(model.num_categories)
        self.code_images = 0

    def _images(self, indices_B: np.ndarray) -> torch.Tensor:
        """float32 images (B, 1, 64, 64) in {0, 1} on the device."""
        x_B1HW = torch.from_numpy(self.dataset.images(indices_B)).unsqueeze(1)
        x_B1HW = x_B1HW.to(device=self.device, dtype=torch.float32)
        if self.channels_last:
            x_B1HW = x_B1HW.contiguous(memory_format=torch.channels_last)
        return x_B1HW

    def _codes(self, z_BM: torch.Tensor, x_B1HW: torch.Tensor) -> np.ndarray:
        self.code_images += int(z_BM.shape[0])
        # torch.argmin returns the first minimum on ties, as np.argmin.
        return self.model.infer_codes(z_BM, x_B1HW).cpu().numpy().astype(np.int64)

    @torch.no_grad()
    def __call__(self, indices_N: np.ndarray, *, codes: bool = True) -> Representation:
        unique_U, inverse_N = np.unique(np.asarray(indices_N, dtype=np.int64), return_inverse=True)
        with_codes = codes and self.has_codes
        mu_UM = np.empty((len(unique_U), self.num_continuous))
        sigma_UM = np.empty_like(mu_UM)
        codes_U = np.empty(len(unique_U), dtype=np.int64) if with_codes else None
        for start in range(0, len(unique_U), self.batch_size):
            rows = slice(start, start + self.batch_size)
            x_B1HW = self._images(unique_U[rows])
            mu_BM, sigma_BM = self.model.encode(x_B1HW)
            mu_UM[rows] = mu_BM.cpu().numpy()
            sigma_UM[rows] = sigma_BM.cpu().numpy()
            if codes_U is not None:
                codes_U[rows] = self._codes(mu_BM, x_B1HW)
        return Representation(
            mu_UM[inverse_N],
            sigma_UM[inverse_N],
            None if codes_U is None else codes_U[inverse_N],
        )

    @torch.no_grad()
    def codes(self, indices_N: np.ndarray, mu_NM: np.ndarray) -> np.ndarray:
        if not self.has_codes:
            raise ValueError("the model has no discrete code (num_categories == 0)")
        unique_U, first_U, inverse_N = np.unique(
            np.asarray(indices_N, dtype=np.int64), return_index=True, return_inverse=True
        )
        # mu came from this model's float32 encoder: the float64 -> float32 round trip is exact.
        mu_UM = np.asarray(mu_NM)[first_U]
        codes_U = np.empty(len(unique_U), dtype=np.int64)
        for start in range(0, len(unique_U), self.batch_size):
            rows = slice(start, start + self.batch_size)
            z_BM = torch.from_numpy(mu_UM[rows]).to(device=self.device, dtype=torch.float32)
            codes_U[rows] = self._codes(z_BM, self._images(unique_U[rows]))
        return codes_U[inverse_N]
