"""dicomweb-gateway: a DICOMweb (PS3.18) server over object storage and legacy DIMSE PACS."""

__version__ = "0.1.0"
