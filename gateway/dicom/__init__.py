"""Pure DICOM helpers: no I/O beyond what the caller hands in, no HTTP types."""
