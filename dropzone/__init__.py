"""dropzone: partner flat files in, Marketo bulk imports out."""

__version__ = "0.1.0"
