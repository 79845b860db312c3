"""Benchmarks support: generated DICOM corpora and the measurements behind ``dicomvault bench``."""
