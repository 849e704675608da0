"""Multi-view, multi-frame 3-D pose model: Swin per image, image relations, 2-D head, PoseFormer lifter.

    from h36m.model import PRESETS, build_model
    net = build_model(PRESETS["tiny"])
    out = net(images)            # images (B, V, F, 3, H, W) -> out.joints2d (B, V, F, 17, 2), out.joints3d
"""
from .config import (IMAGENET_MEAN, IMAGENET_STD, PRESETS, HeadConfig, LifterConfig, ModelConfig, RelationsConfig,
                     SpatialConfig)
from .head import CONFIDENCE_RADIUS, MEAN_POSE_2D, JointHead, confidence
from .lifter import PoseFormer
from .preprocess import normalise_images
from .network import (ModelOutput, PoseNetwork, build_model, load_pretrained_relations, load_pretrained_spatial,
                      read_checkpoint_state)
from .relations import ImageRelations
from .spatial import SpatialEncoder, SpatialFeatures

__all__ = [
    "PRESETS", "IMAGENET_MEAN", "IMAGENET_STD", "normalise_images", "ModelConfig", "SpatialConfig",
    "RelationsConfig", "HeadConfig", "LifterConfig",
    "PoseNetwork", "ModelOutput", "build_model", "load_pretrained_spatial", "load_pretrained_relations",
    "read_checkpoint_state",
    "SpatialEncoder", "SpatialFeatures", "ImageRelations", "JointHead", "MEAN_POSE_2D", "PoseFormer",
    "confidence", "CONFIDENCE_RADIUS",
]
