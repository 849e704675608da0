"""h36m: from the raw Human3.6M release to a trained and evaluated multi-view, multi-frame 3-D pose model.

The installed package `h36m` is this repository's root (`pyproject.toml` maps it with setuptools' `package-dir`):
`h36m.h36m_tools` (the H36M format), `h36m.model` (the network), `h36m.pipelines` (one subpackage per stage) and
`h36m.cli` (the `h36m` command). Nothing else lands at the top of site-packages.
"""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("h36m")
except PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"
