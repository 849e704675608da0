"""`h36m predict`: a trained 2-D network over every clip of some shards, stitched into whole sequences per subject,
action and camera, written as a VideoPose3D 2-D keypoints file (predict)."""
