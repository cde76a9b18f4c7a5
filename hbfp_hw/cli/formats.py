"""``hbfp-hw formats``: list the format presets (BFP, MX, Block Minifloat)."""

from __future__ import annotations

from hbfp_hw.formats import PRESETS

from . import args as cli_args

__all__ = ["add_parser", "validate", "run"]


def add_parser(sub):
    p = sub.add_parser("formats", help="list the format presets",
                       description="List the format presets: BFP and MXINT8 (integer "
                                   "elements), OCP MX and Block Minifloat (minifloat "
                                   "elements).")
    p.add_argument("--json", metavar="PATH", help="write the presets as JSON")
    return p


def validate(args):
    cli_args.check_output_file("--json", args.json)


def run(args):
    rows = []
    for fmt in PRESETS.values():
        d = fmt.to_dict()
        d["max_mantissa"] = fmt.max_mantissa
        d["product_bits"] = fmt.product_bits
        d["default"] = fmt is PRESETS["bfp8"]
        rows.append(d)
    print(f"{'preset':11} {'element':13} {'w':>3} {'block':>5} {'rounding':13} {'exp bits':>8} "
          f"{'MAC width':>9}")
    for fmt, d in zip(PRESETS.values(), rows):
        mark = "  (default)" if d["default"] else ""
        if fmt.is_minifloat:
            mark += "  (not yet: build)"
        elif fmt.is_posit:
            mark += "  (golden model and PyTorch only; MAC width: the quire's)"
        print(f"{d['name']:11} {fmt.element_name:13} {d['mantissa_bits']:>3} {d['block_size']:>5} "
              f"{d['rounding']:13} {d['exponent_bits']:>8} {d['product_bits']:>9}{mark}")
    cli_args.write_json(args.json, {"presets": rows})
    return 0
