"""What a benchmark ran on, recorded beside its numbers (every benchmark's JSON has a ``machine`` entry)."""
from __future__ import annotations

import contextlib
import os
import platform
import sys
from importlib import metadata

import torch

PACKAGES = ("fastkd", "numpy", "torchvision", "pillow", "opencv-python", "ffcv", "numba", "tqdm")


def machine_info(device="cpu") -> dict:
    device = torch.device(device)
    cuda, versions = device.type == "cuda", {}
    for dist in PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[dist] = metadata.version(dist)
    if "nvidia.dali" in sys.modules:  # its distribution's name depends on the CUDA version
        versions["nvidia-dali"] = sys.modules["nvidia.dali"].__version__
    return {"platform": platform.platform(), "python": platform.python_version(), "processor": platform.processor(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "cuda": torch.version.cuda if cuda else None, "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if cuda else "cpu", "versions": versions}
