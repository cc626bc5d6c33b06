"""The distribution installs one name, `fleetpilot`; the repository's folders are not importable on their own."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import fleetpilot.controller

REPO = Path(__file__).resolve().parents[1]


def test_only_fleetpilot_is_importable_from_outside_the_checkout(tmp_path):
    code = (
        "import importlib, json\n"
        "out = {}\n"
        "for name in ['controller', 'training', 'policies', 'fleetpilot.controller', 'fleetpilot.policies']:\n"
        "    try:\n"
        "        importlib.import_module(name); out[name] = True\n"
        "    except ImportError:\n"
        "        out[name] = False\n"
        "print(json.dumps(out))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == (
        '{"controller": false, "training": false, "policies": false, '
        '"fleetpilot.controller": true, "fleetpilot.policies": true}'
    )


def test_the_tests_run_against_the_installed_package():
    assert "controller" not in sys.modules
    assert Path(fleetpilot.controller.__file__).resolve() == REPO / "controller" / "__init__.py"


def test_the_wheel_holds_only_fleetpilot_with_its_models(tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    (wheel,) = tmp_path.glob("fleetpilot-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        entry_points = z.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert {n.split("/")[0] for n in names} == {"fleetpilot", wheel.name.split("-py")[0] + ".dist-info"}
    assert "fleetpilot/policies/models/default/policy.onnx" in names
    assert "fleetpilot/policies/models/default/manifest.json" in names
    assert "fleetpilot/policies/models/synthetic/policy.onnx" in names
    assert "fleetpilot = fleetpilot.controller.cli:main" in entry_points
