"""`ditlab.load_model`: every checkpoint format ditlab reads, registered, behind one call.

The registry and the dispatcher live in `ditlab.models.formats`, below every package that registers a format;
this top-level module imports each format package so that its formats are registered before anything loads
(`import ditlab` imports this module, so every `ditlab.*` import does). A new format package is one more
import line here.
"""

import ditlab.autoencoders.checkpoint  # noqa: F401  ditlab autoencoders, diffusers AutoencoderKL / VQModel
import ditlab.dydit.checkpoint  # noqa: F401  DyDiT files and DyDiT training checkpoints
import ditlab.finetune.adapter  # noqa: F401  fine-tuning adapters, merged onto their base
import ditlab.models.checkpoint  # noqa: F401  native safetensors, official .pt, training checkpoints, run folders
import ditlab.models.interop  # noqa: F401  diffusers folders
import ditlab.models.interop_text  # noqa: F401  diffusers SD3 / PixArt / Flux / Z-Image folders
from ditlab.models.formats import load_model, registered_formats

__all__ = ["load_model", "registered_formats"]
