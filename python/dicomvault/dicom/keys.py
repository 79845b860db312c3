"""Attribute arguments as DCMTK's tools take them: ``-k PatientName=SMITH*``,
``-k (0010,0020)=12345``, ``-k 0008,0052=STUDY`` or a bare ``-k StudyDate`` (return key)."""

from __future__ import annotations

import re

from dicomvault.dicom.values import keyword_of, tag_and_vr

_TAG = re.compile(r"^\(?([0-9A-Fa-f]{4}),([0-9A-Fa-f]{4})\)?$")


def keyword_named(name: str) -> str:
    """The keyword for a keyword or a (gggg,eeee) tag; ValueError when unknown."""
    name = name.strip()
    match = _TAG.match(name)
    if match:
        tag = int(match.group(1) + match.group(2), 16)
        keyword = keyword_of(tag)
        if not keyword:
            raise ValueError(f"tag {name} is not in the DICOM dictionary")
        return keyword
    tag_and_vr(name)  # raises ValueError for an unknown keyword
    return name


def parse_key(argument: str) -> tuple[str, str]:
    """``Name=value`` -> (keyword, value); ``Name`` alone -> (keyword, "")."""
    name, _, value = argument.partition("=")
    return keyword_named(name), value


def parse_keys(arguments: list[str]) -> dict[str, str]:
    return dict(parse_key(a) for a in arguments)
