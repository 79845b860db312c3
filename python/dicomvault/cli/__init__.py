"""The ``dicomvault`` command line (Typer): archive administration and DICOM verbs."""
