"""Generated DICOM corpora: deterministic, valid Part 10 files for tests and benchmarks.

``clinical_corpus`` is small and varied (patients sharing a PatientID under different issuers,
Greek and Japanese names, studies across years, CT and MR, a 50-frame instance, every family
of transfer syntax); ``ct_corpus``, ``small_corpus`` and ``multiframe_instance`` are the
benchmark corpora. Pixel data is smooth structure plus noise, different for every instance,
so that hashing and compression see realistic data. The same seed gives the same bytes.
"""

from __future__ import annotations

import argparse
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

CT_IMAGE = UID("1.2.840.10008.5.1.4.1.1.2")
MR_IMAGE = UID("1.2.840.10008.5.1.4.1.1.4")
SC_IMAGE = UID("1.2.840.10008.5.1.4.1.1.7")
MULTIFRAME_WORD_SC = UID("1.2.840.10008.5.1.4.1.1.7.3")
_ROOT = "1.2.826.0.1.3680043.8.498."


@dataclass(frozen=True)
class GeneratedInstance:
    path: Path
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    patient_id: str
    modality: str
    transfer_syntax: str
    number_of_frames: int


def _uid(seed: int, *parts: object) -> UID:
    return generate_uid(_ROOT, entropy_srcs=[str(seed), *map(str, parts)])


def _pixels(
    rng: np.random.Generator, rows: int, columns: int, frames: int = 1, bits: int = 16
) -> np.ndarray:
    """Smooth anatomy-like blobs plus noise: compressible, yet unique per call."""
    y, x = np.mgrid[0:rows, 0:columns].astype(np.float32)
    cy, cx = (
        rows / 2 + rng.uniform(-rows / 8, rows / 8),
        columns / 2 + rng.uniform(-columns / 8, columns / 8),
    )
    body = np.exp(-(((y - cy) / (rows / 3)) ** 2 + ((x - cx) / (columns / 3)) ** 2))
    top = 1000 if bits == 16 else 200
    base = (body * top).astype(np.int32)
    stack = [
        base + rng.integers(0, 40 if bits == 16 else 8, size=(rows, columns)) for _ in range(frames)
    ]
    out = np.stack(stack) if frames > 1 else stack[0]
    return out.astype(np.uint16 if bits == 16 else np.uint8)


def _image(
    *,
    seed: int,
    patient: tuple[str, str, str, str],
    study: tuple[str, str, str, str],
    series: tuple[str, str, int],
    number: int,
    sop_class: str,
    pixels: np.ndarray,
    frames: int = 1,
) -> Dataset:
    """A data set with the Patient, Study, Series, Equipment, Image and SOP Common modules."""
    patient_id, issuer, name, charset = patient
    study_uid, date, accession, description = study
    series_uid, modality, series_number = series
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
    sop_uid = _uid(seed, series_uid, number)
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.ImplementationClassUID = UID(_ROOT + "1")
    if charset:
        ds.SpecificCharacterSet = charset
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = date
    ds.SeriesDate = date
    ds.StudyTime = f"{8 + number % 10:02d}{number % 60:02d}00"
    ds.AccessionNumber = accession
    ds.Modality = modality
    ds.Manufacturer = "dicomvault"
    ds.InstitutionName = "General Hospital"
    ds.ReferringPhysicianName = "Referrer^Rita"
    ds.StudyDescription = description
    ds.SeriesDescription = f"{modality} series {series_number}"
    ds.PatientName = name
    ds.PatientID = patient_id
    if issuer:
        ds.IssuerOfPatientID = issuer
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.BodyPartExamined = "CHEST"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = str(seed % 1000)
    ds.SeriesNumber = series_number
    ds.InstanceNumber = number
    ds.PatientOrientation = ""
    if sop_class in (CT_IMAGE, MR_IMAGE):
        ds.FrameOfReferenceUID = _uid(seed, study_uid, "frame")
        ds.PositionReferenceIndicator = ""
        ds.PatientPosition = "HFS"
        ds.ImagePositionPatient = [0.0, 0.0, float(number)]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [0.7, 0.7]
        ds.SliceThickness = 1.0
    if sop_class == CT_IMAGE:
        ds.KVP = 120
        ds.AcquisitionNumber = 1
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
    if sop_class == MR_IMAGE:
        ds.ScanningSequence = "SE"
        ds.SequenceVariant = "NONE"
        ds.ScanOptions = ""
        ds.MRAcquisitionType = "2D"
        ds.EchoTime = 10
        ds.RepetitionTime = 500
        ds.EchoTrainLength = 1
    if sop_class in (SC_IMAGE, MULTIFRAME_WORD_SC):
        ds.ConversionType = "WSD"
    if sop_class == MULTIFRAME_WORD_SC:
        ds.BurnedInAnnotation = "NO"
        ds.PresentationLUTShape = "IDENTITY"
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape[-2:]
    bits = 16 if pixels.dtype == np.uint16 else 8
    ds.BitsAllocated = bits
    ds.BitsStored = bits if bits == 8 else 12
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    if frames > 1:
        ds.NumberOfFrames = frames
        ds.FrameIncrementPointer = 0x00181063
        ds.FrameTime = 40.0
    if sop_class == CT_IMAGE:
        ds.WindowCenter, ds.WindowWidth = 40, 400
    ds.PixelData = pixels.tobytes()
    return ds


def _save(ds: Dataset, path: Path, syntax: UID) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if syntax in (RLELossless, JPEG2000Lossless):
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.compress(syntax, generate_instance_uid=False)
    elif syntax in (JPEGLSLossless, JPEGBaseline8Bit):
        _dcmtk_compress(ds, path, syntax)
        return
    else:
        ds.file_meta.TransferSyntaxUID = syntax
    ds.save_as(path, enforce_file_format=True)


def _dcmtk_compress(ds: Dataset, path: Path, syntax: UID) -> None:
    """JPEG-LS and JPEG baseline come from DCMTK's encoders (pydicom has none)."""
    tool = "dcmcjpls" if syntax == JPEGLSLossless else "dcmcjpeg"
    if shutil.which(tool) is None:
        raise RuntimeError(f"{tool} (Debian package dcmtk) is needed to make {syntax.name} files")
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    with tempfile.TemporaryDirectory() as tmp:
        plain = Path(tmp) / "plain.dcm"
        ds.save_as(plain, enforce_file_format=True)
        # --uid-never: keep the SOP Instance UID even for lossy compression.
        options = (
            ["--encode-lossless"]
            if syntax == JPEGLSLossless
            else ["--encode-baseline", "--uid-never"]
        )
        subprocess.run([tool, *options, str(plain), str(path)], check=True, capture_output=True)


def _generated(path: Path) -> GeneratedInstance:
    """What the written file says (an external encoder may have changed it)."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return GeneratedInstance(
        path,
        str(ds.SOPInstanceUID),
        str(ds.StudyInstanceUID),
        str(ds.SeriesInstanceUID),
        str(ds.PatientID),
        str(ds.Modality),
        str(ds.file_meta.TransferSyntaxUID),
        int(ds.get("NumberOfFrames", 1) or 1),
    )


def clinical_corpus(out: Path, *, seed: int = 0) -> list[GeneratedInstance]:
    """A small, varied archive for functional tests (29 instances)."""
    rng = np.random.default_rng(seed)
    patients = [
        ("12345", "HOSPITAL_A", "Smith^John", ""),
        ("12345", "HOSPITAL_B", "Smith^Jane", ""),
        ("GR001", "", "Διονυσιος^Κωστας", "ISO_IR 126"),
        ("JP001", "", "Yamada^Tarou=山田^太郎=やまだ^たろう", "\\ISO 2022 IR 87"),
        ("P0005", "", "Doe^Jane", ""),
        ("P0006", "", "O'Brien^Sean", ""),
    ]
    # (patient index, date, modalities, accession, description, syntaxes per series)
    studies = [
        (0, "20150312", ["CT"], "ACC1001", "CT CHEST", [ExplicitVRLittleEndian]),
        (
            0,
            "20180704",
            ["CT", "MR"],
            "ACC1002",
            "FOLLOW UP",
            [ExplicitVRLittleEndian, ImplicitVRLittleEndian],
        ),
        (1, "20150312", ["MR"], "ACC2001", "MR HEAD", [RLELossless]),
        (2, "20210101", ["CT"], "ACC3001", "CT ABDOMEN", [JPEG2000Lossless]),
        (3, "20211231", ["MR"], "ACC4001", "MR KNEE", [ExplicitVRBigEndian]),
        (4, "20240229", ["CT"], "ACC5001", "CT HEAD", [DeflatedExplicitVRLittleEndian]),
        (4, "", ["MR"], "ACC5002", "NO DATE", [JPEGLSLossless]),
        (5, "20190615", ["CT"], "ACC6001", "CT SPINE", [JPEGBaseline8Bit]),
    ]
    made: list[GeneratedInstance] = []
    for s, (pi, date, modalities, accession, description, syntaxes) in enumerate(studies):
        patient = patients[pi]
        study_uid = _uid(seed, "study", s)
        for n, (modality, syntax) in enumerate(zip(modalities, syntaxes, strict=True)):
            series_uid = _uid(seed, study_uid, "series", n)
            sop_class = CT_IMAGE if modality == "CT" else MR_IMAGE
            for i in range(1, 4):
                bits = 8 if syntax == JPEGBaseline8Bit else 16
                ds = _image(
                    seed=seed,
                    patient=patient,
                    study=(study_uid, date, accession, description),
                    series=(series_uid, modality, n + 1),
                    number=i,
                    sop_class=sop_class,
                    pixels=_pixels(rng, 64, 64, bits=bits),
                )
                if bits == 8:
                    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = SC_IMAGE
                    ds.BitsStored, ds.HighBit = 8, 7
                path = out / f"study{s}" / f"series{n}" / f"{i}.dcm"
                _save(ds, path, syntax)
                made.append(_generated(path))
    # Two 50-frame instances: native, and RLE (one fragment per frame).
    study_uid = _uid(seed, "study", "multiframe")
    for n, syntax in enumerate((ExplicitVRLittleEndian, RLELossless)):
        series_uid = _uid(seed, study_uid, "series", n)
        ds = _image(
            seed=seed,
            patient=patients[4],
            study=(study_uid, "20231010", "ACC5003", "CINE"),
            series=(series_uid, "MR", n + 1),
            number=1,
            sop_class=MULTIFRAME_WORD_SC,
            pixels=_pixels(rng, 32, 32, frames=50),
            frames=50,
        )
        path = out / "multiframe" / f"{n}.dcm"
        _save(ds, path, syntax)
        made.append(_generated(path))
    return made


def _bulk(
    out: Path, count: int, rows: int, columns: int, seed: int, per_study: int, prefix: str
) -> Iterator[GeneratedInstance]:
    rng = np.random.default_rng(seed)
    base = _pixels(rng, rows, columns).astype(np.int32)
    for i in range(count):
        study = i // per_study
        study_uid = _uid(seed, prefix, "study", study)
        series_uid = _uid(seed, study_uid, "series")
        pixels = (base + rng.integers(0, 64, size=(rows, columns))).astype(np.uint16)
        ds = _image(
            seed=seed,
            patient=(f"{prefix.upper()}{study % 97:04d}", "", f"Bench^{prefix}{study % 97}", ""),
            study=(
                study_uid,
                f"20{10 + study % 15:02d}0{1 + study % 9}15",
                f"A{study:06d}",
                prefix.upper(),
            ),
            series=(series_uid, "CT", 1),
            number=i % per_study + 1,
            sop_class=CT_IMAGE,
            pixels=pixels,
        )
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = out / f"{prefix}{study:05d}" / f"{i:07d}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(path, enforce_file_format=True)
        yield GeneratedInstance(
            path,
            ds.SOPInstanceUID,
            study_uid,
            series_uid,
            ds.PatientID,
            "CT",
            ExplicitVRLittleEndian,
            1,
        )


def ct_corpus(
    out: Path,
    count: int,
    *,
    rows: int = 512,
    columns: int = 512,
    seed: int = 0,
    studies: int | None = None,
) -> list[GeneratedInstance]:
    """``count`` CT images of rows x columns x 16 bit (~0.5 MB at 512x512), Explicit VR LE."""
    per_study = max(1, count // studies) if studies else 100
    return list(_bulk(out, count, rows, columns, seed, per_study, "ct"))


def small_corpus(out: Path, count: int, *, seed: int = 0) -> list[GeneratedInstance]:
    """``count`` ~10 KB instances (64x64x16 bit plus header)."""
    return list(_bulk(out, count, 64, 64, seed, 100, "small"))


class NumberedInstances:
    """Instances numbered 0, 1, 2...: the bytes of one small CT (``rows`` x ``columns``,
    Explicit VR LE) with the instance's own SOP Instance UID, series and study UIDs (a study
    per ``per_study`` instances) and first pixels patched in, all of fixed length: millions
    are written at the speed of the file system, each one distinct (no blob shared)."""

    def __init__(self, *, rows: int = 64, columns: int = 64, per_study: int = 100) -> None:
        self.per_study = per_study
        self.placeholders = (self._sop(0), self._series(0), self._study(0))
        sop, series, study = self.placeholders
        ds = _image(
            seed=0,
            patient=("SUSTAINED", "", "Sustained^Ingest", ""),
            study=(study, "20260101", "SUSTAINED", "SUSTAINED"),
            series=(series, "CT", 1),
            number=1,
            sop_class=CT_IMAGE,
            pixels=_pixels(np.random.default_rng(0), rows, columns),
        )
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = UID(sop)
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        with tempfile.TemporaryDirectory() as tmp:
            ds.save_as(Path(tmp) / "template.dcm", enforce_file_format=True)
            self.template = (Path(tmp) / "template.dcm").read_bytes()
        self.pixels_at = len(self.template) - rows * columns * 2

    @staticmethod
    def _sop(number: int) -> str:
        # Fixed width, and no component with a leading zero (PS3.5 9.1).
        return f"{_ROOT}7.1{number:012d}"

    @staticmethod
    def _series(study: int) -> str:
        return f"{_ROOT}8.1{study:010d}"

    @staticmethod
    def _study(study: int) -> str:
        return f"{_ROOT}9.1{study:010d}"

    @property
    def size(self) -> int:
        return len(self.template)

    def instance(self, number: int) -> bytes:
        study = number // self.per_study
        data = self.template
        for placeholder, uid in zip(
            self.placeholders,
            (self._sop(number), self._series(study), self._study(study)),
            strict=True,
        ):
            data = data.replace(placeholder.encode(), uid.encode())
        # The number in the first four pixels, 12 bits each (BitsStored), so that no two
        # instances share their pixel data.
        first = struct.pack("<4H", *((number >> (12 * k)) & 0xFFF for k in range(4)))
        return data[: self.pixels_at] + first + data[self.pixels_at + len(first) :]

    def write(self, out: Path, first: int, count: int) -> list[Path]:
        """Instances ``first`` to ``first + count - 1`` as files in ``out``."""
        out.mkdir(parents=True, exist_ok=True)
        paths = []
        for number in range(first, first + count):
            path = out / f"{number:09d}.dcm"
            path.write_bytes(self.instance(number))
            paths.append(path)
        return paths


def multiframe_instance(
    out: Path, *, size_mb: int = 500, seed: int = 0, frame_rows: int = 512, frame_columns: int = 512
) -> GeneratedInstance:
    """One native multi-frame of about ``size_mb`` MB, written frame by frame (never whole in
    memory): the header by pydicom, then the Pixel Data element streamed after it."""
    rng = np.random.default_rng(seed)
    frame_bytes = frame_rows * frame_columns * 2
    frames = max(1, size_mb * 1_000_000 // frame_bytes)
    study_uid = _uid(seed, "multiframe-study", size_mb)
    ds = _image(
        seed=seed,
        patient=("MF0001", "", "Multi^Frame", ""),
        study=(study_uid, "20220202", "MF1", "LARGE"),
        series=(_uid(seed, study_uid, "series"), "MR", 1),
        number=1,
        sop_class=MULTIFRAME_WORD_SC,
        pixels=np.zeros((frame_rows, frame_columns), np.uint16),
        frames=frames,
    )
    del ds.PixelData
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = out / f"multiframe-{size_mb}mb.dcm"
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    base = _pixels(rng, frame_rows, frame_columns).astype(np.int32)
    with path.open("ab") as f:
        f.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, frames * frame_bytes))
        for _ in range(frames):
            f.write((base + rng.integers(0, 64, size=base.shape)).astype("<u2").tobytes())
    return GeneratedInstance(
        path,
        ds.SOPInstanceUID,
        study_uid,
        ds.SeriesInstanceUID,
        "MF0001",
        "MR",
        ExplicitVRLittleEndian,
        frames,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="Write a generated DICOM corpus.")
    parser.add_argument("kind", choices=["clinical", "ct", "small", "multiframe"])
    parser.add_argument("out", type=Path)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size-mb", type=int, default=500)
    args = parser.parse_args()
    if args.kind == "clinical":
        made = clinical_corpus(args.out, seed=args.seed)
    elif args.kind == "ct":
        made = ct_corpus(args.out, args.count, seed=args.seed)
    elif args.kind == "small":
        made = small_corpus(args.out, args.count, seed=args.seed)
    else:
        made = [multiframe_instance(args.out, size_mb=args.size_mb, seed=args.seed)]
    total = sum(g.path.stat().st_size for g in made)
    print(f"wrote {len(made)} instances, {total / 1e6:.1f} MB, under {args.out}")


if __name__ == "__main__":
    main()
