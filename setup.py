"""avat3r-jax: install with ``pip install -e .[dev]`` (Python >= 3.12)."""

from setuptools import find_packages, setup

setup(
    name="avat3r-jax",
    version="0.1.0",
    description="Animatable 3D Gaussian head avatars from a few photos, in JAX/Flax (AVAT3R reimplementation).",
    python_requires=">=3.12",
    packages=find_packages(include=["avat3r_jax*", "data_pipelines*", "configs*", "launch*"]),
    install_requires=[
        "jax>=0.11",
        "flax>=0.12",
        "optax>=0.2.5",
        "orbax-checkpoint>=0.11",
        "grain>=0.2.12",
        "tensorflow-datasets>=4.9.9",
        "array-record>=0.8",
        "ml-collections>=1.1",
        "absl-py>=2.1",
        "einops>=0.8",
        "numpy>=2.0",
        "pillow>=10.0",
        "imageio>=2.34",
        "imageio-ffmpeg>=0.5",
        "tqdm>=4.66",
        "flatbuffers>=24.3",
        "safetensors>=0.4",
        "tensorboardX>=2.6",
        "dm-pix>=0.4.5",
    ],
    extras_require={
        "torch": ["torch>=2.9"],
        "dev": ["pytest>=8.0", "pytest-xdist>=3.8", "ruff>=0.6", "plyfile>=1.0", "playwright>=1.50"],
        # The live browser viewer (avat3r-view): a UI-only stack (websockets, trimesh, rich) the library does not need.
        "view": ["viser>=1.1.1"],
        "xm": ["xmanager>=0.7"],
    },
    entry_points={
        "console_scripts": [
            "avat3r-train=launch.train:run",
            "avat3r-data=launch.data:run",
            "avat3r-export=launch.export:run",
            "avat3r-infer=launch.infer:run",
            "avat3r-prepare=launch.prepare:run",
            "avat3r-view=launch.view:run",
            "avat3r-quickstart=launch.quickstart:run",
        ],
    },
)
