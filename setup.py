from setuptools import find_packages, setup

setup(
    name="umx",
    version="0.1.0",
    description="Open-Unmix music source separation training, data first",
    python_requires=">=3.11",
    packages=find_packages(include=["umx", "umx.*"]),
    install_requires=[
        "torch==2.13.0",
        "numpy",
        "soundfile",
        "soxr",
        "webdataset",
        "fsspec",
        "s3fs>=2024.12",  # s3:// shard sets (an old s3fs is what a resolver falls back to otherwise)
        "aiohttp",  # http(s):// shard sets (fsspec's HTTP filesystem)
        "requests",
        "zarr>=3",  # the zarr store format
        "tqdm",
        "musdb",  # MUSDB18 layout: track lists and validation split
        "stempeg",  # decodes MUSDB18 .stem.mp4 through Debian's ffmpeg
        "pyyaml",
        "museval",
        "matplotlib",
        "click>=8.2",  # the command lines (Choice.normalize_choice is 8.2's)
        "bs-roformer==1.2.4",  # BS-RoFormer and Mel-Band RoFormer (--arch); pulls no other torch
        "demucs==4.1.0",  # HTDemucs (--arch htdemucs): its model and apply modules; no torchaudio, no other torch
    ],
    extras_require={
        "test": ["pytest", "pytest-xdist", "hypothesis", "moto[server]",
                 "omegaconf"],  # demucs' own checkpoint writer (states.serialize_model) in the tests
        "gcs": ["gcsfs"],
    },
    entry_points={
        "console_scripts": [
            "umxt=umx.cli:main",  # not `umx`: openunmix installs a script of that name
            "umx-synth=umx.synth:main",
            "umx-prep=umx.prep.cli:main",
            "umx-train=umx.train.cli:main",
            "umx-separate=umx.separate:main",
            "umx-eval=umx.evaluate_cli:main",
            "umx-plot=umx.plot:main",
            "umx-bench=umx.bench_cli:main",
        ]
    },
)
