"""Where the network runs: the one choice of torch device for train, predict, evaluate and triangulate.

    dev = torch_device("auto")        # cuda:LOCAL_RANK when a GPU is present, else cpu
"""
from __future__ import annotations

import os


def torch_device(name: str = "auto"):
    """auto | cpu | cuda | cuda:N -> torch.device: `auto` is the GPU of this process (LOCAL_RANK under torchrun)
    when one is present, else the CPU; `cuda` without an index is that GPU too."""
    import torch

    use_cuda = torch.cuda.is_available() if name == "auto" else name.startswith("cuda")
    if not use_cuda:
        return torch.device("cpu")
    if name in ("auto", "cuda"):
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cuda", torch.device(name).index or 0)
