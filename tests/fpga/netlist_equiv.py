# amaranth: UnusedElaboratable=no
"""Write the RTLIL of the GemmSystems that the builds construct, without ``src`` attributes.

``python tests/fpga/netlist_equiv.py DIR`` elaborates the ``GemmSystem`` of the ULX3S build
(for the ECP5), of the iCEBreaker build (for the iCE40) and of the simulated board, each
through the factory the build or the simulated board itself uses, writes ``DIR/<name>.il``,
and prints each file's SHA-256 and build hash. Two runs on different commits are compared with
``diff -r``: identical files mean identical netlists.
"""

import hashlib
import sys
from pathlib import Path

from amaranth.back import rtlil

from hbfp_hw.fpga.boards.boards import BuildConfig, default_system
from hbfp_hw.fpga.host.simboard import SimConfig
from hbfp_hw.rtl_gen.common import TargetFamily


def systems():
    """Return ``{name: (make, platform)}`` of the three default builds: ``make()`` builds the
    ``GemmSystem`` as the board build or the simulated board does."""
    return {
        "ulx3s-85f": (lambda: default_system(BuildConfig("ulx3s-85f")), TargetFamily("ecp5")),
        "icebreaker": (lambda: default_system(BuildConfig("icebreaker")),
                       TargetFamily("ice40")),
        "sim": (lambda: SimConfig().gateware(), None),
    }


def netlist(system, platform):
    """Return the RTLIL of ``system`` elaborated for ``platform``, without ``src`` attributes."""
    return rtlil.convert(system, name="gemm_system", platform=platform, emit_src=False)


def main(out):
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name, (make, platform) in systems().items():
        system = make()
        text = netlist(system, platform)
        (out / f"{name}.il").write_text(text)
        print(name, system.info.build_hash, hashlib.sha256(text.encode()).hexdigest())


if __name__ == "__main__":
    main(sys.argv[1])
