"""ditlab.autoencoders: images in [-1, 1] <-> model inputs (pixels, or scaled VAE latents), and latent caches.

diffusers is imported only inside :func:`load_vae`, so importing this package stays cheap.
"""

from .base import Autoencoder, IdentityAutoencoder, sample_from_moments
from .diffusers_vae import DIT_LATENT_SCALE, DiffusersVAE, load_vae
from .latent_cache import LatentCache, cache_latents, load_latent_cache

__all__ = [
    "Autoencoder",
    "IdentityAutoencoder",
    "sample_from_moments",
    "DIT_LATENT_SCALE",
    "DiffusersVAE",
    "load_vae",
    "LatentCache",
    "cache_latents",
    "load_latent_cache",
]
