"""pytest options and shared fixtures for the cocotb/Amaranth tests of romsim.rtl."""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("NUMBA_CACHE_DIR", str(ROOT / ".cache" / "numba"))
os.environ.setdefault("XDG_CACHE_HOME", str(ROOT / ".cache"))
# Verilator models for the tests are compiled without C++ optimisation (~3x faster builds; the
# tests run few vectors). bench/bench_rtl_sim.py keeps the default (-Os).
os.environ.setdefault("ROMSIM_VERILATOR_OPT", "-O0")


def pytest_addoption(parser):
    parser.addoption(
        "--full",
        action="store_true",
        default=False,
        help="romsim.rtl: sweep every tile of one real layer on Verilator (slow)",
    )
    parser.addoption(
        "--full-bits", default="4", help="romsim.rtl --full: comma-separated weight bit widths"
    )
    parser.addoption("--full-layer", default="0", help="romsim.rtl --full: layer index")
    parser.addoption(
        "--wave",
        action="store_true",
        default=False,
        help="romsim.rtl: dump a waveform (FST) of every cocotb run into its build folder",
    )


def pytest_configure(config):
    if config.getoption("--wave", default=False):  # read by romsim.rtl.simrun
        os.environ["ROMSIM_RTL_WAVES"] = "1"


@pytest.fixture(scope="session")
def rtl_build_dir() -> Path:
    d = ROOT / "build" / "rtl"
    d.mkdir(parents=True, exist_ok=True)
    return d
