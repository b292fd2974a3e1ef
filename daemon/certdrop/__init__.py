"""certdrop: a small, trustworthy certificate authority behind a watch folder."""

__version__ = "0.1.0"
