"""`h36m train`. loop: the training loop; losses: pure loss functions; config: TrainConfig and presets' recipes;
checkpoint: atomic checkpoints; schedule: warm-up + cosine; pose_stats: the mean-pose baseline's sums."""
