"""The QAT round trip of ``scripts/train_qat_digits.py`` on a few test images: a digits
CNN trained briefly with Brevitas's fixed-point quantizers, exported as QCDQ ONNX and
compiled without calibration data; the golden model's integers equal Brevitas's
quantized logits divided by their scale, and the instruction-level simulator equals
the golden model.

Needs the ``train`` extra (torch, brevitas); run with ``python -m pytest -m slow
tests/test_qat_digits.py``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("brevitas", reason="brevitas is not installed (pip install '.[train]')")

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "train_qat_digits.py"


def test_golden_equals_brevitas(tmp_path, seed):
    res = subprocess.run([sys.executable, str(SCRIPT), "--epochs", "2", "--images", "48",
                          "--seed", str(seed % 1000), "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=900, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["images"] == 48
    assert summary["mismatched_images"] == 0
    assert summary["golden_equals_brevitas"] is True
    assert summary["isa_equals_golden"] is True
    assert (tmp_path / "model.onnx").exists()
