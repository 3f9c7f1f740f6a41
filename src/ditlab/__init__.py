"""ditlab: Diffusion Transformers conditioned through adaptive normalization.

import ditlab
model = ditlab.create_model("DiT-S/2", input_size=32, num_classes=10)
print(ditlab.flops(model), "Gflops")
ditlab.save_model(model, "dit.safetensors"); model = ditlab.load_model("dit.safetensors")
images, labels = ditlab.generate(model, classes=[3], per_class=8, steps=50)
"""

from ditlab.loading import load_model  # registers every checkpoint format (see ditlab.models.formats)
from ditlab.models import (
    DiT,
    DiTConfig,
    count_parameters,
    create_model,
    flops,
    save_model,
)
from ditlab.sampling import generate, sample

__version__ = "0.1.0"

__all__ = [
    "DiT",
    "DiTConfig",
    "count_parameters",
    "create_model",
    "flops",
    "generate",
    "load_model",
    "sample",
    "save_model",
]
