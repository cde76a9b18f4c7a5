"""Argument helpers shared by every ``hbfp-hw`` subcommand.

Every error names the flag: ``--block-size must be a power of two between 2 and 64 for the
RTL, not 128``. Parse-time checks are ``type=`` functions that raise
:class:`argparse.ArgumentTypeError`; checks that need several flags, or the file system, raise
:class:`UsageError` from a subcommand's ``validate(args)``, which runs before any work. Both
end as one line on stderr and exit code 2 (:class:`Parser`). Nothing here imports more than
the standard library and :mod:`hbfp_hw.formats`.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import re
import sys
import tempfile
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from hbfp_hw.formats import (
    ACCUMULATOR_SUFFIXES,
    EXPONENT_BITS_RANGE,
    MANTISSA_BITS_RANGE,
    PRESETS,
    Accumulator,
    BFPFormat,
    FloatFormat,
    Rounding,
    ScaleRule,
    check_operand_formats,
    split_accumulator,
)

__all__ = [
    "Parser", "UsageError", "CommandError", "one_line",
    "integer", "positive_int", "number", "positive_float", "seed", "int_list",
    "format_preset", "format_name", "format_names",
    "add_format_arguments", "format_from_args", "RTL_BLOCK_SIZE_RANGE",
    "device_url", "check_sim_options", "listen_address", "check_shape", "MAX_OPERAND_ELEMENTS",
    "check_output_file", "check_output_dir", "write_json", "flag_message",
]

#: Block sizes the RTL generators take (:data:`hbfp_hw.rtl_gen.common.RTL_BLOCK_SIZE_RANGE`,
#: repeated here so that parsing does not import the generators; a test keeps them equal).
RTL_BLOCK_SIZE_RANGE = (2, 64)

#: Largest A (M x K) + B (K x N) + C (M x N) a GEMM command allocates: 64 Mi float32 values,
#: 256 MiB. Checked before anything is allocated.
MAX_OPERAND_ELEMENTS = 1 << 26


class UsageError(Exception):
    """A bad argument; the message names the flag. Reported as ``hbfp-hw CMD: error: ...``."""


class CommandError(Exception):
    """A failure that is the user's to fix, found while working (a device that is not there,
    an output that cannot be written). Reported as ``hbfp-hw: error: ...``, exit code 2."""


def one_line(text):
    """Join the lines of ``text`` with "; " (an error is reported on one line)."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return "; ".join(lines) or "unknown error"


_CHOICE = re.compile(r"^argument (?P<flag>[^:]+): invalid choice: (?P<value>.+) "
                     r"\(choose from (?P<choices>.*)\)$")
_PREFIX = re.compile(r"^argument (?P<flag>[^:]+): (?P<rest>.*)$", re.S)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, ``PROG: error: MESSAGE``, exit code 2.

    argparse's own messages are rewritten to name the flag first: ``argument --m: --m must
    be ...`` becomes ``--m must be ...``, an invalid choice becomes ``--target must be one of
    ecp5-85f, ice40-up5k, not 'x'``.
    """

    def error(self, message):
        message = one_line(message)
        choice = _CHOICE.match(message)
        prefix = _PREFIX.match(message)
        if choice:
            choices = ", ".join(c.strip().strip("'") for c in choice["choices"].split(","))
            message = f"{choice['flag']} must be one of {choices}, not {choice['value']}"
        elif prefix:
            flag, rest = prefix["flag"], prefix["rest"]
            if rest == "expected one argument":
                message = f"{flag} needs a value"
            elif any(rest.startswith(f) for f in flag.split("/")):
                message = rest              # our type= functions name the flag already
            else:
                message = f"{flag}: {rest}"
        elif message.startswith("the following arguments are required: "):
            names = message.split(": ", 1)[1]
            message = f"{names} {'is' if ',' not in names else 'are'} required"
        self.exit(2, f"{self.prog}: error: {message}\n")


# -- numbers ------------------------------------------------------------------------------------

def _range_text(lo, hi):
    if hi is None:
        return f"at least {lo}"
    if lo is None:
        return f"at most {hi}"
    return f"between {lo} and {hi}"


def check_int(flag, value, lo=None, hi=None, *, power_of_two=False, why=""):
    """Check an integer ``value`` of ``flag``; raise :class:`UsageError` naming the flag."""
    in_range = (lo is None or value >= lo) and (hi is None or value <= hi)
    if power_of_two and not (in_range and value >= 1 and not value & (value - 1)):
        raise UsageError(f"{flag} must be a power of two {_range_text(lo, hi)}{why}, "
                         f"not {value}")
    if not in_range:
        raise UsageError(f"{flag} must be {_range_text(lo, hi)}{why}, not {value}")
    return value


def _parse_int(flag, text):
    try:
        return int(str(text).strip(), 10)
    except ValueError:
        raise UsageError(f"{flag} must be an integer, not {text!r}") from None


def integer(flag, lo=None, hi=None, *, power_of_two=False, why=""):
    """``type=`` for an integer flag in ``[lo, hi]`` (either end open when None)."""
    def parse(text):
        try:
            return check_int(flag, _parse_int(flag, text), lo, hi, power_of_two=power_of_two,
                             why=why)
        except UsageError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return parse


def positive_int(flag, maximum=None):
    """``type=`` for an integer flag that must be at least 1 (and at most ``maximum``)."""
    return integer(flag, 1, maximum)


def number(flag, lo=None, hi=None, *, lo_open=False):
    """``type=`` for a finite number in ``[lo, hi]``, or ``(lo, hi]`` with ``lo_open``."""
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} must be a number, not {text!r}") from None
        if value != value or value in (float("inf"), float("-inf")):
            raise argparse.ArgumentTypeError(f"{flag} must be a finite number, not {text}")
        if lo_open and hi is None and lo == 0:
            if not value > 0:
                raise argparse.ArgumentTypeError(f"{flag} must be positive, not {text}")
        elif ((lo is not None and (value <= lo if lo_open else value < lo))
              or (hi is not None and value > hi)):
            left = "(" if lo_open else "["
            raise argparse.ArgumentTypeError(f"{flag} must be in {left}{lo}, {hi}], not {text}")
        return value
    return parse


def positive_float(flag):
    """``type=`` for a number flag that must be positive."""
    return number(flag, 0, lo_open=True)


def seed(flag="--seed", maximum=0xFFFFFFFF):
    """``type=`` for a seed: an integer in ``[0, maximum]`` (default ``2**32 - 1``)."""
    return integer(flag, 0, maximum)


def int_list(flag, lo=None, hi=None, *, power_of_two=False, why=""):
    """``type=`` for ``"4,6,8"``: comma-separated integers, each checked as :func:`integer`;
    duplicates dropped, order kept."""
    def parse(text):
        values = []
        for item in str(text).split(","):
            item = item.strip()
            if not item:
                continue
            try:
                value = int(item, 10)
            except ValueError:
                raise argparse.ArgumentTypeError(
                    f"{flag} takes comma-separated integers, not {item!r}") from None
            try:
                values.append(check_int(flag, value, lo, hi, power_of_two=power_of_two, why=why))
            except UsageError as e:
                raise argparse.ArgumentTypeError(str(e)) from None
        if not values:
            raise argparse.ArgumentTypeError(f"{flag} needs at least one value")
        return list(dict.fromkeys(values))
    return parse


# -- formats ------------------------------------------------------------------------------------

#: The presets with integer elements: the ones `demo` and `build` take so far.
INTEGER_PRESETS = [name for name, fmt in PRESETS.items() if fmt.element is None]
#: The posit presets: only the commands that run the golden model and PyTorch take them.
POSIT_PRESETS = [name for name, fmt in PRESETS.items() if fmt.is_posit]


def _preset(flag, text, allow_fp32=False, minifloat=False, accumulators=False):
    key = str(text).strip().lower()
    if allow_fp32 and key == "fp32":
        return "fp32"
    names = (["fp32"] if allow_fp32 else []) + (
        [n for n in PRESETS if accumulators or n not in POSIT_PRESETS] if minifloat
        else INTEGER_PRESETS)
    if key in POSIT_PRESETS and not accumulators:
        raise argparse.ArgumentTypeError(
            f"{flag} {key}: posit elements run in the golden model and PyTorch (hbfp-hw "
            f"train) only so far; this command takes {', '.join(names)}")
    base, accumulator = split_accumulator(key)
    if base in PRESETS and accumulator is not Accumulator.FP32:
        if not accumulators:
            raise argparse.ArgumentTypeError(
                f"{flag} {key}: the {accumulator} accumulator runs in the golden model and "
                f"PyTorch (hbfp-hw train) only so far; this command takes {base}")
        return _preset(flag, base, minifloat=minifloat).replace(accumulator=accumulator)
    if key in PRESETS:
        if PRESETS[key].is_minifloat and not minifloat:
            raise argparse.ArgumentTypeError(
                f"{flag} {key}: this command takes integer-element presets so far "
                f"({', '.join(names)}); minifloat ones run in the golden model, PyTorch, "
                f"the units of generate/verify and the simulated board "
                f"(sim://?format={key})")
        return PRESETS[key]
    suffixes = (f" (each may end in {', '.join('_' + x for x in ACCUMULATOR_SUFFIXES)}: "
                f"the GEMMs' accumulator)" if accumulators else "")
    raise argparse.ArgumentTypeError(f"{flag} must be one of {', '.join(names)}{suffixes}, "
                                     f"not {text!r}")


def format_preset(flag="--format", minifloat=False):
    """``type=`` for a preset name (case-insensitive): returns the :class:`BFPFormat`.
    ``minifloat``: the minifloat presets too (their consumer checks what it takes)."""
    return lambda text: _preset(flag, text, minifloat=minifloat)


def format_name(flag="--format", minifloat=False, operand_pairs=False, accumulators=False):
    """``type=`` for a preset name or ``fp32``: returns the canonical name. ``minifloat``:
    the command also takes the minifloat presets (MX, Block Minifloat). ``operand_pairs``:
    also ``A/G``, activations and weights in preset ``A`` and gradients in ``G`` (PyTorch's
    per-operand formats). ``accumulators``: a preset may end in an accumulator suffix
    (``bfp8_bf16sr``, :data:`~hbfp_hw.formats.ACCUMULATOR_SUFFIXES`)."""
    def parse(text):
        if operand_pairs and "/" in str(text):
            parts = str(text).split("/")
            if len(parts) != 2:
                raise argparse.ArgumentTypeError(
                    f"{flag} A/G takes two presets (activations and weights A, gradients G), "
                    f"not {text!r}")
            a, g = (_preset(flag, p, minifloat=minifloat, accumulators=accumulators)
                    for p in parts)
            try:
                check_operand_formats(a, g)
            except ValueError as e:
                raise argparse.ArgumentTypeError(f"{flag} {text}: {e}") from None
            return f"{a.name}/{g.name}"
        value = _preset(flag, text, allow_fp32=True, minifloat=minifloat,
                        accumulators=accumulators)
        return value if value == "fp32" else value.name
    return parse


def format_names(flag="--formats", minifloat=False, operand_pairs=False, accumulators=False):
    """``type=`` for ``"bfp8,bfp4,fp32"``: canonical names, duplicates dropped, order kept
    (``operand_pairs``, ``accumulators``: see :func:`format_name`)."""
    def parse(text):
        names = [format_name(flag, minifloat, operand_pairs, accumulators)(item)
                 for item in str(text).split(",") if item.strip()]
        if not names:
            raise argparse.ArgumentTypeError(f"{flag} needs at least one format")
        return list(dict.fromkeys(names))
    return parse


def add_format_arguments(p):
    """Add --format/--mantissa-bits/--block-size/--rounding/--exponent-bits/--scale-rule/
    --input-format, the format of a unit of the RTL generators (``generate``, ``verify``)."""
    w_lo, w_hi = MANTISSA_BITS_RANGE
    e_lo, e_hi = EXPONENT_BITS_RANGE
    n_lo, n_hi = RTL_BLOCK_SIZE_RANGE
    p.add_argument("--format", metavar="PRESET", type=format_preset(minifloat=True),
                   help=f"format preset ({', '.join(PRESETS)}); overrides the fields below")
    p.add_argument("--mantissa-bits", type=integer("--mantissa-bits", w_lo, w_hi), metavar="W",
                   help=f"element width, {w_lo}..{w_hi}")
    p.add_argument("--block-size", metavar="N",
                   type=integer("--block-size", n_lo, n_hi, power_of_two=True,
                                why=" for the RTL"),
                   help=f"block size, power of two {n_lo}..{n_hi}")
    p.add_argument("--rounding", default=None, choices=[r.value for r in Rounding],
                   help="default nearest-even (or the preset's)")
    p.add_argument("--exponent-bits", type=integer("--exponent-bits", e_lo, e_hi), default=None,
                   metavar="E", help=f"shared-exponent width, {e_lo}..{e_hi} (default 8, or "
                                     f"the preset's)")
    p.add_argument("--scale-rule", default=None, choices=[r.value for r in ScaleRule],
                   help="shared-scale rule of a minifloat preset (numerics.md 5.2; default the "
                        "preset's, floor); integer elements take floor only")
    p.add_argument("--input-format", default="fp32", choices=[f.value for f in FloatFormat])


def format_from_args(args):
    """Return the :class:`BFPFormat` of :func:`add_format_arguments`; raise UsageError."""
    overrides = {k: v for k, v in (("rounding", args.rounding),
                                   ("exponent_bits", args.exponent_bits),
                                   ("scale_rule", args.scale_rule)) if v is not None}
    flags = {"rounding": "--rounding", "exponent_bits": "--exponent-bits",
             "scale_rule": "--scale-rule"}
    try:
        if args.format is not None:
            if args.mantissa_bits is not None or args.block_size is not None:
                raise UsageError("--format: give either --format or --mantissa-bits/"
                                 "--block-size, not both")
            fmt = args.format.replace(**overrides)
        else:
            if args.mantissa_bits is None or args.block_size is None:
                raise UsageError("--mantissa-bits and --block-size are required (or give "
                                 "--format)")
            fmt = BFPFormat(args.mantissa_bits, args.block_size, **overrides)
    except ValueError as e:
        raise UsageError(flag_message(e, flags)) from None
    check_rtl_block_size("--format" if args.format is not None else "--block-size", fmt)
    return fmt


def check_rtl_block_size(flag, fmt):
    """Raise UsageError unless the RTL generators take ``fmt``'s block size."""
    lo, hi = RTL_BLOCK_SIZE_RANGE
    if not lo <= fmt.block_size <= hi:
        raise UsageError(f"{flag} gives blocks of {fmt.block_size}; the RTL takes a power of "
                         f"two between {lo} and {hi}")
    return fmt


def flag_message(exc, flags):
    """Rewrite a product ``ValueError`` that names a Python field (``mantissa_bits must ...``)
    to name the flag (``--mantissa-bits must ...``); ``flags`` maps fields to flags. Messages
    that start with no known field are prefixed with ``default`` when ``flags`` has it."""
    text = one_line(exc)
    name, _, rest = text.partition(" ")
    if name in flags:
        return f"{flags[name]} {rest}"
    if "" in flags:
        return f"{flags['']}: {text}"
    return text


# -- devices and addresses ----------------------------------------------------------------------

_URL_HELP = ("'sim', 'sim://?OPTION=VALUE&...', 'serial:///dev/ttyUSB0?baud=3000000' or "
             "'tcp://HOST:PORT'")


def check_device_url(flag, url):
    """Check the syntax of a device URL (the driver opens it later); raise UsageError."""
    scheme = url.split(":", 1)[0] if ":" in url else url
    bad = f"{flag} must be {_URL_HELP}, not {url!r}"
    if scheme == "sim":
        if url == "sim":
            return url
        if not url.startswith("sim://"):
            raise UsageError(bad)
        parts = urlsplit(url)
        if parts.netloc or parts.path not in ("", "/"):
            raise UsageError(f"{flag}: a sim URL has no host or path, not {url!r}; use 'sim' "
                             f"or 'sim://?lanes=4&instance=1'")
        for item in parts.query.split("&"):
            if item and "=" not in item:
                raise UsageError(f"{flag}: sim:// options are OPTION=VALUE, not {item!r}")
        return url
    if scheme not in ("serial", "tcp") or not url.startswith(scheme + "://"):
        raise UsageError(bad)
    parts = urlsplit(url)
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    if scheme == "serial":
        if not (parts.path or parts.netloc):
            raise UsageError(f"{flag}: {url!r} names no device; use serial:///dev/ttyUSB0")
        for key in ("baud", "window"):
            if key in query:
                value = query[key]
                if not value.isdigit() or int(value) < 1:
                    raise UsageError(f"{flag}: the {key} of a serial URL must be a positive "
                                     f"integer, not {value!r}")
        return url
    try:
        port = parts.port
    except ValueError:
        raise UsageError(f"{flag}: the port of {url!r} must be between 1 and 65535") from None
    if not parts.hostname or not port:
        raise UsageError(f"{flag}: {url!r} needs a host and a port between 1 and 65535, such "
                         f"as tcp://127.0.0.1:7777")
    return url


def check_sim_options(flag, url):
    """Check the options of a ``sim://?...`` URL against the simulated board's gateware (at
    validation, not parse time: it constructs, without elaborating, the board's system)."""
    if not url.startswith("sim://"):
        return url
    from hbfp_hw.fpga.host.simboard import SimConfig

    try:
        with constructed_only():
            SimConfig.from_query(urlsplit(url).query).gateware()
    except (TypeError, ValueError) as e:
        raise UsageError(f"{flag} {url!r}: {one_line(e)}") from None
    return url


@contextlib.contextmanager
def constructed_only():
    """Validation constructs gateware (its constructors check the parameters) and never
    elaborates it. Mark every elaboratable made inside the block as used, also when a
    constructor raises halfway, so that Amaranth does not warn when they are collected."""
    from amaranth._unused import MustUse

    def unused():
        # type(), not isinstance(): the latter reads __class__, which some objects
        # (deprecated torch aliases) answer with a warning.
        return {id(o): o for o in gc.get_objects()
                if issubclass(type(o), MustUse) and not getattr(o, "_MustUse__used", True)}

    before = unused()
    try:
        yield
    finally:
        for key, obj in unused().items():
            if key not in before:
                obj._MustUse__silence = True
        del before


def device_url(flag="--device", *, allow_none=False):
    """``type=`` for a device URL (syntax only); ``allow_none`` also takes ``none``."""
    def parse(text):
        if allow_none and text == "none":
            return text
        try:
            return check_device_url(flag, text)
        except UsageError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return parse


def listen_address(flag="--listen"):
    """``type=`` for ``HOST:PORT`` (``[::1]:7777`` for IPv6), port 0..65535: ``(host, port)``."""
    def parse(text):
        host, sep, port = text.rpartition(":")
        if not sep or not port.isdigit():
            raise argparse.ArgumentTypeError(f"{flag} must be HOST:PORT, not {text!r}")
        if not 0 <= int(port) <= 65535:
            raise argparse.ArgumentTypeError(
                f"{flag} port must be between 0 and 65535, not {int(port)}")
        return host.strip("[]") or "127.0.0.1", int(port)
    return parse


def check_shape(m, n, k, flags=("--m", "--n", "--k"), limit=MAX_OPERAND_ELEMENTS):
    """Raise UsageError if A (m x k), B (k x n) and C (m x n) hold more than ``limit`` values."""
    total = m * k + k * n + m * n
    if total > limit:
        fm, fn, fk = flags
        raise UsageError(f"{fm} {m} {fn} {n} {fk} {k}: A, B and C would hold {total} float32 "
                         f"values; at most {limit} ({limit * 4 >> 20} MiB) are allowed")


# -- output paths -------------------------------------------------------------------------------

def _probe(directory):
    """Return None if a file can be created in ``directory``, else the reason. Creates and
    removes a temporary directory, so the check holds for root too; leaves nothing."""
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".hbfp-hw-probe-", dir=directory))
    except OSError as e:
        return e.strerror or str(e)
    return None


def _nearest_existing(path):
    path = Path(os.path.abspath(path))
    while not path.exists():
        if path.parent == path:
            break
        path = path.parent
    return path


def _check_creatable_dir(flag, path, what):
    """``path`` (a directory that may not exist yet) can be made and written."""
    ancestor = _nearest_existing(path)
    if not ancestor.is_dir():
        raise UsageError(f"{flag}: cannot create {what} {str(path)!r}: {str(ancestor)!r} is a "
                         f"file, not a directory")
    reason = _probe(ancestor)
    if reason:
        raise UsageError(f"{flag}: cannot create {what} {str(path)!r} in {str(ancestor)!r} "
                         f"({reason})")


def check_output_file(flag, path, *, create_parents=False):
    """Check that ``path`` can be written as a file (before any work); raise UsageError.

    The path must not be a directory; its folder must exist (or, with ``create_parents``,
    be creatable) and be writable; an existing file must be writable.
    """
    if path is None:
        return None
    p = Path(path)
    if str(path) == "" or p.is_dir():
        raise UsageError(f"{flag} must be a file path, not the directory {str(path)!r}")
    parent = p.parent if str(p.parent) else Path(".")
    if p.exists():
        if not os.access(p, os.W_OK):
            raise UsageError(f"{flag}: {str(path)!r} is not writable")
    if parent.is_dir():
        reason = _probe(parent)
        if reason:
            raise UsageError(f"{flag}: cannot write {str(path)!r} ({str(parent)!r}: {reason})")
    elif parent.exists():
        raise UsageError(f"{flag}: cannot write {str(path)!r}: {str(parent)!r} is a file, "
                         f"not a directory")
    elif create_parents:
        _check_creatable_dir(flag, parent, "the folder of")
    else:
        raise UsageError(f"{flag}: cannot write {str(path)!r}: the directory {str(parent)!r} "
                         f"does not exist")
    return path


def check_output_dir(flag, path):
    """Check that ``path`` is a writable directory or can be created as one; raise UsageError."""
    if path is None:
        return None
    p = Path(path)
    if str(path) == "":
        raise UsageError(f"{flag} must be a directory, not ''")
    if p.exists() and not p.is_dir():
        raise UsageError(f"{flag} must be a directory, not the file {str(path)!r}")
    if p.is_dir():
        reason = _probe(p)
        if reason:
            raise UsageError(f"{flag}: cannot write in {str(path)!r} ({reason})")
    else:
        _check_creatable_dir(flag, p, "the directory")
    return path


def write_json(path, payload, *, flag="--json", create_parents=False, announce=True):
    """Write ``payload`` as indented JSON; a write that fails raises :class:`CommandError`."""
    if not path:
        return
    try:
        if create_parents:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as f:
            json.dump(payload, f, indent=2)
            f.write("\n")
    except OSError as e:
        raise CommandError(f"{flag}: cannot write {str(path)!r}: {e.strerror or e}") from None
    if announce:
        print(f"wrote {path}")


def warn(text):
    """Print a one-line warning on stderr."""
    print(f"warning: {text}", file=sys.stderr)
