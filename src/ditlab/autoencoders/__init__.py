"""ditlab.autoencoders."""
