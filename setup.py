"""kdtool: knowledge-distillation recipes for compressing ASR models."""
from setuptools import find_packages, setup

# Pinned to versions that install together on Python 3.11 (espnet 202511 pins setuptools<74,
# torch >= 2.13 needs setuptools >= 77, so torch stays at 2.11).
install_requires = [
    "torch==2.11.0",
    "torchaudio==2.11.0",
    "espnet==202511",
    "lightning==2.6.6",
    "sentencepiece==0.2.0",
    "kaldiio==2.18.1",
    "soundfile==0.14.0",
    "pyyaml==6.0.3",
    "jiwer==4.0.0",
    "tensorboard==2.21.0",
    "matplotlib==3.10.9",
    "tqdm==4.70.1",
    # export and deployment (kdtool.export): sherpa-onnx 2.0.1 bundles its own onnxruntime
    "onnx==1.23.2",
    "onnxruntime==1.31.1",
    "sherpa-onnx==2.0.1",
]

setup(
    name="kdtool",
    version="0.1.0",
    description="Recipes that compress speech recognition models by knowledge distillation",
    python_requires=">=3.11,<3.12",
    packages=find_packages(include=["kdtool", "kdtool.*"]),
    install_requires=install_requires,
    extras_require={"test": ["pytest==9.2.0", "pytest-timeout==2.4.0", "pytest-xdist==3.8.0",
                              "kaldi-native-fbank==1.22.4"]},
)
