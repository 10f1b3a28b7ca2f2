"""The public API: every name in __all__ resolves; importing the package does not import torch."""

import subprocess
import sys

import latpred


def test_every_public_name_resolves():
    for name in latpred.__all__:
        assert getattr(latpred, name) is not None, name


def test_import_is_cheap():
    code = "import sys, latpred, latpred.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
