"""dicomweb-gateway: a DICOMweb (PS3.18) server over object storage and legacy DIMSE PACS."""

__version__ = "0.1.0"


def package_version() -> str:
    """The installed distribution's version (its metadata), else the source tree's."""
    from importlib import metadata

    try:
        return metadata.version("dicomweb-gateway")
    except metadata.PackageNotFoundError:
        return __version__
