"""Generators of malformed and unusual input for the fault-tolerance tests (issue 8).

:mod:`fuzz.corpus` builds bad images, bad tags and bad archives from the real fixture
images (``tests/fixtures/corpus``); :mod:`fuzz.stages` runs pipeline stages in child
processes that a test can SIGKILL and compares the outputs of two runs.
"""
