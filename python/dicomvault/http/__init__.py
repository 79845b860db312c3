"""HTTP access to the archive: DICOMweb (PS3.18) served next to the DICOM listener."""
