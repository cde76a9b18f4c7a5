"""``hbfp-hw formats``: list the BFP format presets."""

from __future__ import annotations

from hbfp_hw.formats import PRESETS

from . import args as cli_args

__all__ = ["add_parser", "validate", "run"]


def add_parser(sub):
    p = sub.add_parser("formats", help="list the BFP format presets",
                       description="List the BFP format presets.")
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
    print(f"{'preset':8} {'w':>3} {'block':>5} {'rounding':13} {'exp bits':>8} {'MAC width':>9}")
    for d in rows:
        mark = "  (default)" if d["default"] else ""
        print(f"{d['name']:8} {d['mantissa_bits']:>3} {d['block_size']:>5} {d['rounding']:13} "
              f"{d['exponent_bits']:>8} {d['product_bits']:>9}{mark}")
    cli_args.write_json(args.json, {"presets": rows})
    return 0
