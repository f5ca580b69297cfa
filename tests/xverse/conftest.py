"""XVerse tests import the fixture writers and the naive reference from this folder."""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
