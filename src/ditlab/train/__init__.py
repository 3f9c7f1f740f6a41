"""ditlab.train."""
