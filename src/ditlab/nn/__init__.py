"""ditlab.nn."""
