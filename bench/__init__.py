"""Benchmark of the gateway against Orthanc's DICOMweb plugin: run ``python bench/run.py``."""
