import os
import sys

# The tests import helpers that live beside them (tests/spag_reference.py, ...).
sys.path.insert(0, os.path.dirname(__file__))
