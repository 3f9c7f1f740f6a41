"""ditlab.models."""
