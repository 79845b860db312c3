"""DICOM network services: the SCP behind ``dicomvault serve`` (C-ECHO, C-STORE, C-FIND,
C-MOVE, C-GET) and the SCU verbs (echo, send, find, get, move), on pynetdicom."""
