"""DICOM value handling shared by the store, the index and the network services."""
