"""hwctl: program networks onto PCM test chips, read them back over time, measure accuracy."""

__version__ = "0.1.0"
