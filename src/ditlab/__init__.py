"""ditlab: Diffusion Transformers conditioned through adaptive normalization.

    import ditlab
    model = ditlab.create_model("DiT-S/2", input_size=32, num_classes=10)
"""

__version__ = "0.1.0"
