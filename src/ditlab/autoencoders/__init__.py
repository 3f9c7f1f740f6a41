"""ditlab.autoencoders: images in [-1, 1] <-> model inputs (pixels, or scaled VAE latents), and latent caches.

    ae = load_autoencoder(path)    # a ditlab autoencoder file / run folder, a diffusers AutoencoderKL or VQModel
    z = ae.encode(images)          # scaled latents; ae.decode(z) -> images

ditlab's own KL-VAE and VQ-VAE live in ``ldm`` (trained by ``ditlab vae train``, see ``ditlab.train.vae``), diffusers
conversions in ``interop``, the sharded latent cache in ``latent_cache``. diffusers is imported only when a
diffusers ``AutoencoderKL`` is actually loaded, so importing this package stays cheap.
"""

from .base import Autoencoder, IdentityAutoencoder, sample_from_moments
from .checkpoint import AUTOENCODER_FILE, autoencoder_spec, load_autoencoder, save_autoencoder
from .diffusers_vae import DIT_LATENT_SCALE, DiffusersVAE, load_vae
from .interop import estimate_scale, export_diffusers, import_diffusers
from .latent_cache import LatentCache, cache_latents, load_latent_cache
from .ldm import AutoencoderConfig, KLAutoencoder, VectorQuantizer, VQAutoencoder, build_autoencoder

__all__ = [
    "Autoencoder",
    "IdentityAutoencoder",
    "sample_from_moments",
    "AUTOENCODER_FILE",
    "autoencoder_spec",
    "load_autoencoder",
    "save_autoencoder",
    "DIT_LATENT_SCALE",
    "DiffusersVAE",
    "load_vae",
    "estimate_scale",
    "export_diffusers",
    "import_diffusers",
    "LatentCache",
    "cache_latents",
    "load_latent_cache",
    "AutoencoderConfig",
    "KLAutoencoder",
    "VQAutoencoder",
    "VectorQuantizer",
    "build_autoencoder",
]
