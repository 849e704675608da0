"""`h36m export` and the VideoPose3D `.npz` interchange: export (a release or an extracted dataset -> the field's
`data_3d_h36m.npz` / `data_2d_h36m_gt.npz`), npzfile (writing such files atomically, naming their actions).
Reading them is h36m_tools.npz (safe: no pickle runs)."""
