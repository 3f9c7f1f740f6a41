"""ditlab.eval."""
