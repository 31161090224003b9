"""dicom-forwarder: a DICOM watch-folder autoforwarder."""

__version__ = "0.1.0"
