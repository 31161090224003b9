"""`send`'s changes to each data set before it is sent: storescu's invented patient,
study, series and instance UIDs (``+II``, ``+IR``, ``+IS``, ``+IP``), then those of
:mod:`forwarder.datachanges` (``-up``, ``-u``)."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from forwarder.datachanges import changes

if TYPE_CHECKING:
    from pydicom.dataset import Dataset


def generate_uid() -> str:
    from pydicom.uid import generate_uid as pydicom_uid

    return str(pydicom_uid())


class UidInventor:
    """storescu's +II/+IR/+IS/+IP: every image gets a new SOP Instance UID and invented
    patient, study and series: a new series after n images (+IR, default 100), a new
    study after n series (+IS, 50), a new patient after n studies (+IP, 25). Patient ID,
    Patient Name, Study ID, Series Number and Instance Number are set as storescu sets
    them (a counter after the time in seconds), and only where the data set has them."""

    def __init__(self, series_every: int, study_every: int, patient_every: int):
        self.series_every, self.study_every, self.patient_every = (
            series_every, study_every, patient_every)
        self.stamp = str(int(time.time()))
        self.images = self.series = self.studies = self.patients = 0
        self._new_series()
        self._new_study()
        self._new_patient()

    def _new_series(self) -> None:
        self.series_uid = generate_uid()
        self.series_number = str(self.series)  # kept when a new study resets the count

    def _new_study(self) -> None:
        self.study_uid = generate_uid()
        self.study_id = f"SID_{self.stamp}{self.studies}"

    def _new_patient(self) -> None:
        self.patient_id = f"PID_{self.stamp}{self.patients}"
        self.patient_name = f"FORWARDER^TEST_PN_{self.stamp}{self.patients}"

    def __call__(self, ds: Dataset) -> None:
        if self.images >= self.series_every:
            self.images, self.series = 0, self.series + 1
            self._new_series()
        if self.series >= self.study_every:
            self.series, self.studies = 0, self.studies + 1
            self._new_study()
        if self.studies >= self.patient_every:
            self.studies, self.patients = 0, self.patients + 1
            self._new_patient()
        # as storescu: values replaced where the data set has them, none added
        for keyword, value in (("PatientID", self.patient_id),
                               ("PatientName", self.patient_name),
                               ("StudyInstanceUID", self.study_uid), ("StudyID", self.study_id),
                               ("SeriesInstanceUID", self.series_uid),
                               ("SeriesNumber", self.series_number),
                               ("InstanceNumber", str(self.images))):
            if keyword in ds:
                setattr(ds, keyword, value)
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        self.images += 1


def modifier(args: argparse.Namespace):  # noqa: ANN202 - returns None or a callable
    steps: list[Callable[[Dataset], None]] = []
    if args.invent_instance or args.invent_series or args.invent_study or args.invent_patient:
        steps.append(UidInventor(args.invent_series or 100, args.invent_study or 50,
                                 args.invent_patient or 25))
    return changes(args.uid_padding, args.new_vr, steps)
