"""The frozen stage-1 encoder as the diffusion stages use it: its identity (sha256) and batched embeddings.

    encoder = FrozenEncoder("runs/ssl", device)
    e = encoder(images)          # uint8 [B, S, S, 3] (numpy) or [B, 3, S, S] (torch) -> float32 [B, D] on the CPU

Training conditions on these embeddings, generation on those of its source patches, and the fidelity check on
those of the generated images, all through this one preprocessing (the encoder's own eval transform).
"""

from pathlib import Path

import numpy as np
import torch

from pathgen.runtime.device import precision_for


class FrozenEncoder:
    def __init__(self, path: str | Path, device: torch.device | str = "cpu"):
        from pathgen.ssl.export import encoder_sha256, load_encoder

        self.path = Path(path)
        self.sha256 = encoder_sha256(self.path)  # EncoderError when the weights are missing
        model, self.transform = load_encoder(self.path)
        self.device = torch.device(device)
        self.model = model.to(self.device).requires_grad_(False)
        self.embed_dim = int(model.num_features)
        self.precision = precision_for(self.device)

    def preprocess(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 images, HWC (numpy) or CHW (torch), -> the encoder's normalised input batch."""
        return torch.stack([self.transform(img) for img in images])

    @torch.no_grad()
    def __call__(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        x = self.preprocess(images).to(self.device, non_blocking=True)
        with self.precision.autocast():
            return self.model(x).float().cpu()
