"""A built-in benchmark of real photos from Debian packages and scikit-image (no download)."""

from multigrain.evaluation.builtin.build import BuiltinManifest, build_builtin_benchmark
from multigrain.evaluation.builtin.phash import phash_descriptors

__all__ = ["BuiltinManifest", "build_builtin_benchmark", "phash_descriptors"]
