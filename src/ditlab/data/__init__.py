"""ditlab.data."""
