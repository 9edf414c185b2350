"""Publishing: the Hub upload and the Space's files and configuration."""
