"""distillers: a PyTorch knowledge-distillation zoo (see README.md)."""
from setuptools import find_packages, setup

setup(
    name="distillers",
    version="0.1.0",
    description="Knowledge-distillation zoo: one registry, hook-based feature taps, one trainer",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["core*", "distillers*", "models*", "data*", "engine*"]),
    py_modules=["train_teacher", "train_student"],
    package_data={"engine.teachers": ["manifest.yaml"]},  # the teacher zoo, read at run time
    entry_points={"console_scripts": [
        "distillers-train-teacher = engine.cli:teacher_main",
        "distillers-train-student = engine.cli:student_main",
        "distillers-collect = engine.results.cli:main",
    ]},
    install_requires=[
        "torch>=2.1",
        "torchvision>=0.16",
        "timm>=0.9",
        "tensorboard>=2.12",
        "tqdm>=4.60",
        "pyyaml>=6.0",
        "scipy>=1.10",
        "numpy",
        "pillow",
    ],
    extras_require={
        "test": ["pytest>=7", "matplotlib>=3.7"],
        "plot": ["matplotlib>=3.7"],  # distillers-collect --plot
        "dali": ["nvidia-dali-cuda120"],
    },
)
