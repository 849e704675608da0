"""What the network expects of its input images: the crops as the loader gives them -> normalised floats."""
from __future__ import annotations

import torch
import torch.nn.functional as tf

from .config import SpatialConfig


def normalise_images(images: torch.Tensor, cfg: SpatialConfig) -> torch.Tensor:
    """uint8 RGB (B, V, F, 3, H, W) on the device -> float32 (B, V, F, 3, S, S) normalised with `cfg.mean` /
    `cfg.std`, resized to S = `cfg.img_size` (bilinear, antialiased) if the crops have another size."""
    x = images.float().div_(255.0)
    mean = torch.tensor(cfg.mean, device=x.device).view(3, 1, 1)
    std = torch.tensor(cfg.std, device=x.device).view(3, 1, 1)
    x = (x - mean) / std
    size = cfg.img_size
    if x.shape[-1] != size or x.shape[-2] != size:
        shape = x.shape
        x = tf.interpolate(x.flatten(0, 2), size=(size, size), mode="bilinear", antialias=True,
                           align_corners=False).reshape(*shape[:4], size, size)
    return x
