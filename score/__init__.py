"""score: teach language models to improve themselves with reinforcement learning, in JAX.

Importing `score` is light: subpackages are imported on use, and nothing here pulls in
torch, transformers or tensorflow.
"""

__version__ = "0.1.0"
