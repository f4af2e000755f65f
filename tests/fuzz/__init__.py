"""Fuzz tests of the command line (see harness.py); run with ``make fuzz`` or CAFFE2_ORT_FUZZ=1."""
