"""Local OCI images built from Debian packages, without a registry.

``python -m nri_zeropod.images debs`` lists the packages to download (one line
per suite); ``python -m nri_zeropod.images build`` builds every image as an OCI
layout tar under ``/opt/nri-zeropod/images`` (skipping the ones whose inputs did
not change); ``nri-zeropod node up`` imports them into containerd.
"""

from nri_zeropod.images.recipes import RECIPES, REGISTRY, Recipe

__all__ = ["RECIPES", "REGISTRY", "Recipe"]
