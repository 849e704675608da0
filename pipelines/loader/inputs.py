"""The one builder of the network's inputs from a loader batch, for train, predict and evaluate alike.

    x = network_inputs(batch, net.cfg.spatial, device)
    out = net(x.images, x.view_mask, x.view_index, x.to_screen)      # out.joints3d when the network lifts

`to_screen` carries each crop's place in its camera's frame, so that the lifter sees what it sees in every stage:
crop coordinates ([0, 1], the crop side = 1) -> full-frame video px through the clip's stored box -> the camera's
nominal pixel frame -> VideoPose3D's screen normalisation of that frame (h36m_tools.cameras.nominal_screen). The
whole chain is affine per axis, so it is a (scale, offset) pair per view and frame: screen = crop01 x scale + offset.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from h36m.h36m_tools.cameras import nominal_frame, screen_affine


@dataclass
class NetInputs:
    """A batch on the device: images (B, V, F, 3, H, W) normalised for the spatial module, view_mask (B, V) bool,
    view_index (B, V) long, to_screen ((B, V, F, 1, 2) scale, (B, V, F, 1, 2) offset) float32, and the crop side in
    px that the batch's pose2d is measured in."""
    images: object
    view_mask: object
    view_index: object
    to_screen: tuple
    crop: float


def crop_to_screen(box: np.ndarray, crop: float, cameras: list[list[dict]]) -> tuple[np.ndarray, np.ndarray]:
    """(scale, offset), each (B, V, F, 2): the affine map from crop coordinates in [0, 1] (u x crop = crop px) to
    the lifter's input, for boxes (B, V, F, 4) x0, y0, x1, y1 in full-frame video px and each view's camera dict
    (id, width, height: the video's size). Views past a clip's own count get the crop-as-frame map (2u - 1)."""
    box = np.asarray(box, np.float64)
    b, v = box.shape[:2]
    scale = np.full(box.shape[:3] + (2,), 2.0)
    offset = np.full(box.shape[:3] + (2,), -1.0)
    for i in range(b):
        for j, cam in enumerate(cameras[i][:v]):
            s, w, h = nominal_frame(str(cam["id"]), float(cam["width"]), float(cam["height"]))
            sa, oa = screen_affine(w, h)
            side = box[i, j, :, 2:] - box[i, j, :, :2]          # full px per crop unit (u = 1 is the crop side)
            scale[i, j] = side * s * sa
            offset[i, j] = box[i, j, :, :2] * s * sa + oa
    return scale, offset


def crop_to_nominal(points: np.ndarray, box: np.ndarray, crop: float, camera: dict) -> np.ndarray:
    """(F, 17, 2) crop px of one view of a clip, its boxes (F, 4) in video px and its camera dict (id, width, height)
    -> (F, 17, 2) px of the camera's nominal frame: what every 2-D file this project writes holds."""
    from h36m.pipelines.extract.crop import to_full

    s = nominal_frame(str(camera["id"]), float(camera["width"]), float(camera["height"]))[0]
    return to_full(np.asarray(points, np.float64), np.asarray(box, np.float64), crop) * s


def network_inputs(batch: dict, spatial_cfg, device) -> NetInputs:
    """A loader batch (pipelines.loader) -> NetInputs on `device`."""
    import torch

    from h36m.model import normalise_images
    from h36m.pipelines.loader.loader import batch_crop_size

    nb = device.type == "cuda"
    crop = batch_crop_size(batch)
    scale, offset = crop_to_screen(batch["box"].numpy(), crop, batch["cameras"])
    to_screen = tuple(torch.from_numpy(a[..., None, :].astype(np.float32)).to(device, non_blocking=nb)
                      for a in (scale, offset))
    return NetInputs(images=normalise_images(batch["images"].to(device, non_blocking=nb), spatial_cfg),
                     view_mask=batch["view_mask"].to(device, non_blocking=nb).bool(),
                     view_index=batch["view_index"].to(device, non_blocking=nb), to_screen=to_screen, crop=crop)


__all__ = ["NetInputs", "network_inputs", "crop_to_screen", "crop_to_nominal"]
