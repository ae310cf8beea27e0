"""lenet-hpo: which LeNet-5 is really best on a small image dataset, and proof of it."""

__version__ = "0.1.0"
