"""sheldon: the small library every pipeline step imports."""

__version__ = "0.1.0"
