"""`h36m synth`: a synthetic release in the exact H36M layout and formats (release: the command; motion: the
people's joint angles; render: drawing them through the real cameras)."""
