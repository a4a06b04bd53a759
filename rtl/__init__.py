"""Installed as romsim.rtl (setuptools package-dir maps the top-level rtl/ folder).

Amaranth RTL of the fused cell and its tooling (docs/rtl.md):
``params`` (cell parameters and shared layouts, no Amaranth), ``tile`` (a real ROM tile and its
kernel golden outputs), ``cell`` (the Amaranth components), ``fp`` (fp32 dequantizer and adder),
``emit`` (Verilog into build/),
``simrun`` (cocotb runner on Verilator/Icarus), ``synth`` (Yosys area -> calibration JSON),
``brom`` (structural B-ROM and standard-ROM arrays of a ROM image).
"""
