"""ditlab.diffusion."""
