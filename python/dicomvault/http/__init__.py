"""HTTP access to the archive, served next to the DICOM listener: the REST API, DICOMweb
(PS3.18), Prometheus metrics, the OpenAPI document and the web UI."""
