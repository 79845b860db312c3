"""Timezone Offset From UTC in a C-FIND identifier: the archive does not negotiate Timezone
query adjustment, so the attribute is matched and returned like any other (PS3.4 C.2.2.2:
"may be present in the Identifier but is not matched if Timezone query adjustment is
negotiated"). A retrieve selects by its keys (PS3.4 C.4.2.2.1), not by the requestor's time
zone."""

from __future__ import annotations

import pydicom
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from tests.net.conftest import Server, storescu
from tests.net.test_dcmtk_peers import QR, findscu, getscu


def test_timezone_offset_is_matched_and_returned_like_any_attribute(tmp_path):
    server = Server(tmp_path, {QR: {"aet": QR, "host": "127.0.0.1", "port": 1}}).start()
    studies = {}
    for offset in ("+0100", "-0500", None):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        if offset is None:
            del ds.TimezoneOffsetFromUTC
        else:
            ds.TimezoneOffsetFromUTC = offset
        path = tmp_path / f"{offset}.dcm"
        ds.save_as(path)
        storescu(server, [path])
        studies[ds.StudyInstanceUID] = offset or ""
    try:
        keys = {"StudyInstanceUID": "", "TimezoneOffsetFromUTC": ""}
        found = findscu(server, "STUDY", keys, tmp_path)
        assert {ds.StudyInstanceUID: ds.get("TimezoneOffsetFromUTC", "") for ds in found} == studies
        found = findscu(server, "STUDY", keys | {"TimezoneOffsetFromUTC": "+0100"}, tmp_path)
        assert [ds.TimezoneOffsetFromUTC for ds in found] == ["+0100"]
        for study in studies:
            got = getscu(
                server,
                tmp_path / study,
                QueryRetrieveLevel="STUDY",
                StudyInstanceUID=study,
                TimezoneOffsetFromUTC="+0900",
            )
            assert len(got) == 1, study
    finally:
        assert server.stop() == 0
