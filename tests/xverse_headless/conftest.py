"""Headless XVerse tests use the released-format writers of both methods (tests/xverse, tests/ia)."""
import os
import sys

HERE = os.path.dirname(__file__)
sys.path[:0] = [os.path.join(HERE, "..", "xverse"), os.path.join(HERE, "..", "ia")]
