import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_scripts_exist_and_refuse_cleanly():
    for name in ["main_rgb.py", "main_flow.py", "main_twostream.py", "main_ms.py", "main_ms_op.py"]:
        assert (ROOT / name).is_file(), name
