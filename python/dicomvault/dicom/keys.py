"""Attribute arguments as DCMTK's tools take them: ``-k PatientName=SMITH*``,
``-k (0010,0020)=12345``, ``-k 0008,0052=STUDY`` or a bare ``-k StudyDate`` (return key)."""

from __future__ import annotations

import re

from pydicom.datadict import keyword_for_tag, tag_for_keyword

_TAG = re.compile(r"^\(?([0-9A-Fa-f]{4}),([0-9A-Fa-f]{4})\)?$")


def keyword_of(name: str) -> str:
    """The keyword for a keyword or a (gggg,eeee) tag; ValueError when unknown."""
    name = name.strip()
    match = _TAG.match(name)
    if match:
        tag = int(match.group(1) + match.group(2), 16)
        keyword = keyword_for_tag(tag)
        if not keyword:
            raise ValueError(f"tag {name} is not in the DICOM dictionary")
        return keyword
    if tag_for_keyword(name) is None:
        raise ValueError(f"unknown DICOM keyword {name!r}")
    return name


def parse_key(argument: str) -> tuple[str, str]:
    """``Name=value`` -> (keyword, value); ``Name`` alone -> (keyword, "")."""
    name, _, value = argument.partition("=")
    return keyword_of(name), value


def parse_keys(arguments: list[str]) -> dict[str, str]:
    return dict(parse_key(a) for a in arguments)
