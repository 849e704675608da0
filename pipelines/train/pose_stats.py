"""The mean-pose baseline's statistics, gathered while training and kept in the checkpoint."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class PoseStats:
    """Running sums over the training batches for the mean-pose baseline: crop-normalised 2-D joints ([0, 1])
    and root-relative camera 3-D joints (mm), of rank 0's share of the data."""
    sum2d: np.ndarray = field(default_factory=lambda: np.zeros((17, 2)))
    sum3d: np.ndarray = field(default_factory=lambda: np.zeros((17, 3)))
    count: int = 0

    def update(self, pose2d01: np.ndarray, pose3d_rel: np.ndarray) -> None:
        """(n, 17, 2) and (n, 17, 3) joints of present views and frames."""
        self.sum2d += pose2d01.reshape(-1, 17, 2).sum(0)
        self.sum3d += pose3d_rel.reshape(-1, 17, 3).sum(0)
        self.count += int(pose2d01.reshape(-1, 17, 2).shape[0])

    @property
    def mean2d(self) -> np.ndarray:
        return self.sum2d / max(self.count, 1)

    @property
    def mean3d(self) -> np.ndarray:
        return self.sum3d / max(self.count, 1)

    def state(self) -> dict:
        import torch

        return {"sum2d": torch.from_numpy(self.sum2d.copy()), "sum3d": torch.from_numpy(self.sum3d.copy()),
                "count": self.count}

    @classmethod
    def from_state(cls, s: dict | None) -> "PoseStats":
        if not s:
            return cls()
        return cls(s["sum2d"].numpy().astype(np.float64), s["sum3d"].numpy().astype(np.float64), int(s["count"]))
