# amaranth: UnusedElaboratable=no
"""CheckUnit on its own: the statuses of WRITE, COMPUTE and READ_C, in the simulator.

A testbench presents a decoder event and pulses the unit's strobes in the cycles of
GemmSystem's CHECK states. The statuses must follow docs/protocol.md (the error order of
section 3, the capacity rules of 4.3 and 4.4) at full width: the hand-written cases sit at
every capacity and one over it, the random ones compare with a full-width Python reference.
"""

import random
from types import SimpleNamespace

import pytest
from amaranth.hdl import Module, Signal, Value
from amaranth.sim import Simulator

from hbfp_hw.formats import BFPFormat, FloatFormat
from hbfp_hw.fpga.protocol import (
    COMPUTE_ARGS_LAYOUT,
    MAX_READ_WORDS,
    READ_ARGS_LAYOUT,
    WRITE_ARGS_LAYOUT,
    Cmd,
    Flag,
    Status,
    Wire,
    block_bytes,
    to_bytes,
)
from hbfp_hw.fpga.system.checks import CheckUnit, times_constant
from hbfp_hw.fpga.system.decoder import frame_event_layout
from hbfp_hw.rtl_gen.layout import pack, unpack

FMT = BFPFormat(8, 4)
#: GemmSystem's small test device: A 16 blocks, B 8 words per bank, C 8 words per bank.
SMALL = dict(lanes=2, a_blocks=16, b_blocks=16, c_words=16, max_payload=128)
#: Room for the longest READ_C (16383 words) and READBACK (16382 words).
BIG = dict(lanes=2, a_blocks=16, b_blocks=8200, c_words=16400, max_payload=128)
BFP_BYTES = block_bytes(FMT, Wire.BFP)                      # 5
FLOAT_BYTES = block_bytes(FMT, Wire.FLOAT)                  # 16
Q, ACC, RB = int(Flag.QUIET), int(Flag.ACCUMULATE), int(Flag.READBACK)
NO_C = (False, 0, 0, 0)                                     # c_valid, c_rows, c_cols, c_at


def unit(cfg=SMALL, *, float_wire=True):
    return CheckUnit(FMT, input_format=FloatFormat.FP32, float_wire=float_wire, **cfg)


def write(count, start, *, wire=Wire.BFP, flags=0, length=None, b=False):
    if length is None:
        length = 8 + count * block_bytes(FMT, wire)
    args = to_bytes(WRITE_ARGS_LAYOUT, dict(wire=int(wire), flags=flags, count=count,
                                            start=start))
    return (Cmd.WRITE_B if b else Cmd.WRITE_A, length, args, NO_C)


def compute(m, n, k, flags=0, a_base=0, b_base=0, c_base=0, *, length=20, c=NO_C):
    args = to_bytes(COMPUTE_ARGS_LAYOUT, dict(m=m, n=n, k=k, flags=flags, a_base=a_base,
                                              b_base=b_base, c_base=c_base))
    return (Cmd.COMPUTE, length, args, c)


def read(row, col, count, rows, cols, base=0, flags=0, *, length=16, c_valid=True):
    args = to_bytes(READ_ARGS_LAYOUT, dict(row=row, col=col, count=count, flags=flags,
                                           base=base, rows=rows, cols=cols))
    return (Cmd.READ_C, length, args, (c_valid, 1, 1, 0))


def rtl_checks(dut, cases):
    """Run each case ``(cmd, length, args, (c_valid, c_rows, c_cols, c_at))`` through the
    unit with the executor's timing; return a dict of its outputs per case."""
    layout = frame_event_layout()
    results = []

    async def bench(ctx):
        for cmd, length, args, (c_valid, c_rows, c_cols, c_at) in cases:
            ctx.set(dut.event.as_value(), pack(layout, dict(
                status=0, cmd=int(cmd), seq=0, length=length,
                args=int.from_bytes(args, "little"))))
            ctx.set(dut.is_read, cmd == Cmd.READ_C)
            ctx.set(dut.is_b, cmd == Cmd.WRITE_B)
            for port, value in ((dut.c_valid, c_valid), (dut.c_rows, c_rows),
                                (dut.c_cols, c_cols), (dut.c_at, c_at)):
                ctx.set(port, value)
            await ctx.tick()                                   # IDLE
            out = {}
            if cmd in (Cmd.WRITE_A, Cmd.WRITE_B):
                ctx.set(dut.write_len, 1)                      # WRITE_LEN
                await ctx.tick()
                ctx.set(dut.write_len, 0)                      # WRITE_CMP
                await ctx.tick()                               # WRITE_CHECK
                out.update(status=ctx.get(dut.write_status), empty=ctx.get(dut.write_empty),
                           quiet=ctx.get(dut.write_quiet))
            else:
                is_read = cmd == Cmd.READ_C
                first = None if is_read else ctx.get(dut.compute_status)   # COMPUTE_CHECK
                out.update(quiet=ctx.get(dut.compute_quiet), read_words=ctx.get(dut.read_words))
                await ctx.tick()                               # *_MUL
                if is_read:
                    first = ctx.get(dut.read_status)
                strobe = dut.read_sum if is_read else dut.compute_sum
                ctx.set(strobe, 1)                             # *_SUM
                out.update(prod_mn=ctx.get(dut.prod_mn), row_base=ctx.get(dut.read_row_base))
                await ctx.tick()
                ctx.set(strobe, 0)                             # *_CMP
                await ctx.tick()                               # *_CHECK2
                second = ctx.get(dut.read_cap_status if is_read else dut.compute_cap_status)
                out.update(status=first if first != Status.OK else second,
                           accumulate=ctx.get(dut.accumulate), readback=ctx.get(dut.readback))
            arg = unpack(dut.arg.shape(), ctx.get(dut.arg.as_value()))
            out["arg"] = arg
            out["status"] = Status(out["status"])
            results.append(out)

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return results


def statuses(dut, cases):
    return [r["status"] for r in rtl_checks(dut, cases)]


# -- hand-written cases at the limits -----------------------------------------------------------

WRITE_CASES = [
    (write(16, 0), Status.OK),                                # all of A
    (write(1, 15), Status.OK),
    (write(1, 16), Status.CAPACITY),                          # one past A
    (write(2, 15), Status.CAPACITY),
    (write(0, 16), Status.OK),                                # empty, at the end
    (write(0, 17), Status.CAPACITY),                          # empty, one past it
    (write(1, 15, b=True), Status.OK),                        # B: b_blocks
    (write(1, 16, b=True), Status.CAPACITY),
    (write(7, 9, wire=Wire.FLOAT), Status.OK),                # FLOAT: 16 bytes a block
    (write(7, 10, wire=Wire.FLOAT), Status.CAPACITY),
    (write(1, 0, flags=Q), Status.OK),
    (write(0, 0, length=7), Status.BAD_LENGTH),               # shorter than its arguments
    (write(0, 0, wire=5, length=7), Status.BAD_LENGTH),       # ... before BAD_ARG
    (write(1, 0, wire=2, length=13), Status.BAD_ARG),         # unknown wire
    (write(1, 0, flags=2), Status.BAD_ARG),                   # unknown flag
    (write(1, 0, flags=0x81), Status.BAD_ARG),
    (write(2, 0, length=8 + 2 * BFP_BYTES + 1), Status.BAD_LENGTH),   # one byte over
    (write(2, 0, length=8 + 2 * BFP_BYTES - 1), Status.BAD_LENGTH),   # one byte short
    (write(1, 0, wire=Wire.FLOAT, length=8 + BFP_BYTES), Status.BAD_LENGTH),
    (write(1, 100, length=12), Status.BAD_LENGTH),            # BAD_LENGTH before CAPACITY
    (write(1, 2**32 - 1), Status.CAPACITY),                   # saturated start
    (write(1, 64), Status.CAPACITY),                          # no wrap at the check width
    (write(1, 2**16), Status.CAPACITY),                       # ... or at 16 bits
    (write(2**16 - 1, 0, length=128), Status.BAD_LENGTH),     # saturated count
    (write(24, 0, length=8 + 24 * BFP_BYTES), Status.CAPACITY),
]


def test_write_statuses_at_the_limits():
    cases, want = zip(*WRITE_CASES)
    results = rtl_checks(unit(), cases)
    assert [r["status"] for r in results] == list(want)
    by_case = dict(zip(cases, results))
    assert by_case[write(0, 16)]["empty"] == 1 and by_case[write(0, 17)]["empty"] == 1
    assert by_case[write(16, 0)]["empty"] == 0 and by_case[write(16, 0)]["quiet"] == 0
    assert by_case[write(1, 0, flags=Q)]["quiet"] == 1


def test_write_float_without_a_quantizer_is_unsupported():
    cases = [write(1, 0, wire=Wire.FLOAT), write(1, 0, wire=Wire.FLOAT, length=9),
             write(1, 0), write(1, 0, wire=2, length=13)]
    assert statuses(unit(float_wire=False), cases) == [
        Status.UNSUPPORTED, Status.UNSUPPORTED, Status.OK, Status.BAD_ARG]


ACC_C = (True, 2, 3, 1)                      # the last COMPUTE: 2 x 3 at c_base 1
COMPUTE_CASES = [
    (compute(8, 2, 8), Status.OK),                            # A full, C full
    (compute(8, 2, 9), Status.CAPACITY),                      # one k-block more: A over
    (compute(8, 2, 8, a_base=1), Status.CAPACITY),            # A one over by its base
    (compute(7, 2, 8, a_base=2), Status.OK),
    (compute(1, 16, 4), Status.OK),                           # B: 8 groups x 1 k-block
    (compute(1, 17, 4), Status.CAPACITY),                     # one column more: 9 groups
    (compute(1, 16, 4, b_base=1), Status.CAPACITY),
    (compute(1, 2, 4, b_base=7), Status.OK),
    (compute(1, 2, 1, c_base=7), Status.OK),                  # C: last word
    (compute(1, 2, 1, c_base=8), Status.CAPACITY),
    (compute(9, 1, 1), Status.CAPACITY),                      # C: 9 rows
    (compute(65535, 65535, 65535), Status.CAPACITY),
    (compute(1, 1, 1, a_base=2**32 - 1), Status.CAPACITY),    # saturated bases
    (compute(1, 1, 1, c_base=2**32 - 1), Status.CAPACITY),
    (compute(1, 1, 1, b_base=64), Status.CAPACITY),
    (compute(1, 1, 1, c_base=2**16), Status.CAPACITY),
    (compute(64, 1, 1), Status.CAPACITY),
    (compute(1, 1, 1, length=19), Status.BAD_LENGTH),
    (compute(1, 1, 1, length=21), Status.BAD_LENGTH),
    (compute(0, 1, 1, length=19), Status.BAD_LENGTH),         # BAD_LENGTH before BAD_ARG
    (compute(0, 1, 1), Status.BAD_ARG),
    (compute(1, 0, 1), Status.BAD_ARG),
    (compute(1, 1, 0), Status.BAD_ARG),
    (compute(1, 1, 1, flags=8), Status.BAD_ARG),
    (compute(1, 1, 1, flags=Q | RB), Status.BAD_ARG),
    (compute(0, 1, 1, c_base=99), Status.BAD_ARG),            # BAD_ARG before CAPACITY
    (compute(1, 1, 1, flags=Q | ACC, c=ACC_C), Status.MISMATCH),
    (compute(2, 3, 5, flags=ACC, c_base=1, c=ACC_C), Status.OK),
    (compute(2, 3, 5, flags=ACC, c_base=1), Status.NO_RESULT),
    (compute(2, 3, 5, flags=ACC, c_base=9), Status.CAPACITY),   # CAPACITY before NO_RESULT
    (compute(3, 3, 5, flags=ACC, c_base=1, c=ACC_C), Status.MISMATCH),
    (compute(2, 4, 5, flags=ACC, c_base=1, c=ACC_C), Status.MISMATCH),
    (compute(2, 3, 5, flags=ACC, c_base=2, c=ACC_C), Status.MISMATCH),
    (compute(2, 3, 5, c_base=2, c=ACC_C), Status.OK),         # no ACCUMULATE: no match needed
]


def test_compute_statuses_at_the_limits():
    cases, want = zip(*COMPUTE_CASES)
    results = rtl_checks(unit(), cases)
    assert [r["status"] for r in results] == list(want)
    ok = results[cases.index(compute(2, 3, 5, flags=ACC, c_base=1, c=ACC_C))]
    assert ok["accumulate"] == 1 and ok["readback"] == 0 and ok["quiet"] == 0
    assert ok["prod_mn"] == 6
    assert ok["arg"]["kb_req"] == 2 and ok["arg"]["groups_req"] == 2
    assert (ok["arg"]["m"], ok["arg"]["n"], ok["arg"]["c_base"]) == (2, 3, 1)
    assert results[cases.index(compute(1, 16, 4, b_base=1))]["arg"]["b_base"] == 1


def test_readback_limit():
    """READBACK: M * N = 16382 words fit the reply, 16383 do not (docs/protocol.md 4.3)."""
    cases = [compute(2, 8191, 1, RB), compute(3, 5461, 1, RB), compute(3, 5461, 1)]
    results = rtl_checks(unit(BIG), cases)
    assert [r["status"] for r in results] == [Status.OK, Status.CAPACITY, Status.OK]
    assert results[0]["prod_mn"] == 16382 and results[0]["readback"] == 1


READ_CASES = [
    (read(0, 0, 6, rows=2, cols=3), Status.OK),               # the whole 2 x 3 result
    (read(0, 0, 7, rows=2, cols=3), Status.CAPACITY),         # one word over
    (read(1, 2, 1, rows=2, cols=3), Status.OK),               # the last element
    (read(1, 2, 2, rows=2, cols=3), Status.CAPACITY),
    (read(0, 2, 4, rows=2, cols=3), Status.OK),               # over a row end
    (read(1, 0, 0, rows=2, cols=3), Status.OK),               # no words
    (read(2, 0, 1, rows=2, cols=3), Status.CAPACITY),         # row = rows
    (read(0, 3, 1, rows=2, cols=3), Status.CAPACITY),         # col = cols
    (read(0, 0, 0, rows=0, cols=3), Status.CAPACITY),         # an empty result
    (read(0, 0, 1, rows=2, cols=3, base=4), Status.OK),       # region ends at C's end
    (read(0, 0, 1, rows=2, cols=3, base=5), Status.CAPACITY),   # one word past it
    (read(0, 0, 1, rows=8, cols=2), Status.OK),
    (read(0, 0, 1, rows=9, cols=2), Status.CAPACITY),
    (read(0, 0, 1, rows=4, cols=4), Status.OK),
    (read(0, 0, 1, rows=4, cols=5), Status.CAPACITY),         # 3 groups a row: 12 words
    (read(0, 0, 1, rows=1, cols=1, base=2**32 - 1), Status.CAPACITY),
    (read(0, 0, 1, rows=1, cols=1, base=64), Status.CAPACITY),
    (read(0, 0, 1, rows=1, cols=1, base=2**16), Status.CAPACITY),
    (read(0, 0, 1, rows=64, cols=1), Status.CAPACITY),
    (read(0, 0, 1, rows=2, cols=3, flags=1), Status.BAD_ARG),
    (read(0, 0, 1, rows=2, cols=3, length=15), Status.BAD_LENGTH),
    (read(0, 0, 1, rows=2, cols=3, length=17), Status.BAD_LENGTH),
    (read(0, 0, 1, rows=2, cols=3, flags=1, length=17), Status.BAD_LENGTH),
    (read(0, 0, 1, rows=2, cols=3, c_valid=False), Status.NO_RESULT),
    (read(0, 0, 1, rows=2, cols=3, flags=1, c_valid=False), Status.BAD_ARG),
    (read(5, 0, 99, rows=2, cols=3, c_valid=False), Status.NO_RESULT),  # before CAPACITY
]


def test_read_statuses_at_the_limits():
    cases, want = zip(*READ_CASES)
    results = rtl_checks(unit(), cases)
    assert [r["status"] for r in results] == list(want)
    # The first word of READ_C(row, col) in bank word base + row * ceil(cols / lanes).
    r = rtl_checks(unit(), [read(1, 2, 1, rows=2, cols=5, base=1)])[0]
    assert r["status"] is Status.OK
    assert r["row_base"] == 1 + 1 * 3 and r["read_words"] == 1
    assert r["arg"]["read_groups"] == 3 and r["arg"]["col"] == 2


def test_longest_read():
    cases = [read(0, 0, MAX_READ_WORDS, rows=1, cols=MAX_READ_WORDS),
             read(0, 0, MAX_READ_WORDS + 1, rows=1, cols=MAX_READ_WORDS + 1),
             read(0, 1, MAX_READ_WORDS, rows=1, cols=MAX_READ_WORDS + 1)]
    results = rtl_checks(unit(BIG), cases)
    assert [r["status"] for r in results] == [Status.OK, Status.CAPACITY, Status.OK]
    assert results[0]["read_words"] == MAX_READ_WORDS


# -- random cases against a full-width reference ---------------------------------------------

def fields(layout, args):
    """The argument fields of ``args`` (bytes), as attributes."""
    return SimpleNamespace(**unpack(layout, int.from_bytes(args, "little")))


def reference_status(cmd, length, args, c, cfg=SMALL, float_wire=True):
    """The status docs/protocol.md gives a request, with Python's unbounded integers."""
    lanes, a_blocks = cfg["lanes"], cfg["a_blocks"]
    b_depth, c_depth = cfg["b_blocks"] // lanes, cfg["c_words"] // lanes
    c_valid, c_rows, c_cols, c_at = c
    bs = FMT.block_size
    if cmd in (Cmd.WRITE_A, Cmd.WRITE_B):
        f = fields(WRITE_ARGS_LAYOUT, args)
        if length < 8:
            return Status.BAD_LENGTH
        if f.wire > 1 or f.flags & ~Q:
            return Status.BAD_ARG
        if f.wire == Wire.FLOAT and not float_wire:
            return Status.UNSUPPORTED
        if length - 8 != f.count * block_bytes(FMT, Wire(f.wire)):
            return Status.BAD_LENGTH
        cap = cfg["b_blocks"] if cmd == Cmd.WRITE_B else a_blocks
        return Status.CAPACITY if f.start + f.count > cap else Status.OK
    if cmd == Cmd.COMPUTE:
        f = fields(COMPUTE_ARGS_LAYOUT, args)
        if length != 20:
            return Status.BAD_LENGTH
        if f.flags & ~(Q | ACC | RB) or (f.flags & Q and f.flags & RB):
            return Status.BAD_ARG
        if 0 in (f.m, f.n, f.k):
            return Status.BAD_ARG
        kb, g = -(-f.k // bs), -(-f.n // lanes)
        if (f.a_base + f.m * kb > a_blocks or f.b_base + g * kb > b_depth
                or f.c_base + f.m * g > c_depth or (f.flags & RB and f.m * f.n > 16382)):
            return Status.CAPACITY
        if f.flags & ACC and not c_valid:
            return Status.NO_RESULT
        if f.flags & ACC and (f.m, f.n, f.c_base) != (c_rows, c_cols, c_at):
            return Status.MISMATCH
        return Status.OK
    f = fields(READ_ARGS_LAYOUT, args)
    if length != 16:
        return Status.BAD_LENGTH
    if f.flags:
        return Status.BAD_ARG
    if not c_valid:
        return Status.NO_RESULT
    if (f.row >= f.rows or f.col >= f.cols or f.count > MAX_READ_WORDS
            or f.row * f.cols + f.col + f.count > f.rows * f.cols
            or f.base + f.rows * -(-f.cols // lanes) > c_depth):
        return Status.CAPACITY
    return Status.OK


def test_reference_agrees_with_the_hand_written_cases():
    for case, want in WRITE_CASES + COMPUTE_CASES + READ_CASES:
        assert reference_status(*case) is want, (case, reference_status(*case), want)


def _field(rng, bits):
    """Mostly values near the small capacities and near powers of two, some huge."""
    kind = rng.random()
    if kind < 0.5:
        return rng.randrange(0, 20)
    if kind < 0.8:
        return min(max(0, (1 << rng.randrange(2, bits)) + rng.randrange(-2, 3)), (1 << bits) - 1)
    return rng.randrange(0, 1 << bits)


def random_case(rng):
    which = rng.random()
    if which < 0.4:
        flags = rng.choice([0, 0, ACC, RB, Q, ACC | RB, Q | ACC, 8])
        m, n, k = (rng.choice([0, 1, _field(rng, 16)]) for _ in range(3))
        bases = [rng.choice([0, 0, 1, 7, 8, 15, 16, _field(rng, 32)]) for _ in range(3)]
        c = rng.choice([NO_C, (True, m % 64, n % 64, bases[2] % 64), (True, 2, 3, 1)])
        length = rng.choice([20] * 8 + [19, 21])
        return compute(m, n, k, flags, *bases, length=length, c=c)
    if which < 0.8:
        row, col, count, rows, cols = (_field(rng, 16) for _ in range(5))
        base = rng.choice([0, 0, 1, 7, 8, _field(rng, 32)])
        length = rng.choice([16] * 8 + [15, 17])
        return read(row, col, count, rows, cols, base, rng.choice([0] * 9 + [1]),
                    length=length, c_valid=rng.random() < 0.9)
    wire = rng.choice([Wire.BFP, Wire.BFP, Wire.FLOAT, 2])
    count = rng.choice([0, 1, 2, 7, 16, 17, _field(rng, 16)])
    start = rng.choice([0, 9, 13, 15, 16, 17, _field(rng, 32)])
    bb = FLOAT_BYTES if wire == Wire.FLOAT else BFP_BYTES
    length = min(128, 8 + count * bb) + rng.choice([0] * 6 + [-1, 1, -9])
    length = max(0, min(128, length))                # the decoder bounds it by max_payload
    return write(count, start, wire=wire, flags=rng.choice([0] * 8 + [Q, 4]), length=length,
                 b=rng.random() < 0.5)


@pytest.mark.parametrize("float_wire", [True, False])
def test_random_requests_match_full_width_reference(float_wire):
    rng = random.Random(int(float_wire))
    cases = [random_case(rng) for _ in range(300)]
    want = [reference_status(*case, float_wire=float_wire) for case in cases]
    assert len(set(want)) >= 5                              # the cases reach most statuses
    results = rtl_checks(unit(float_wire=float_wire), cases)
    for case, got, exp in zip(cases, results, want):
        assert got["status"] is exp, (case, got["status"], exp)
        if exp is Status.OK and case[0] == Cmd.COMPUTE:
            f = fields(COMPUTE_ARGS_LAYOUT, case[2])
            assert got["prod_mn"] == f.m * f.n
            assert got["arg"]["kb_req"] == -(-f.k // FMT.block_size)
            assert got["arg"]["groups_req"] == -(-f.n // SMALL["lanes"])
        if exp is Status.OK and case[0] == Cmd.READ_C:
            f = fields(READ_ARGS_LAYOUT, case[2])
            assert got["read_words"] == f.count
            assert got["row_base"] == f.base + f.row * -(-f.cols // SMALL["lanes"])


def test_times_constant_is_the_product_without_a_multiplier():
    # Every constant up to the largest block bytes of a preset format and beyond, at values
    # that set every bit of a 10-bit operand: the value of each sum of shifts, and no `*`.
    x = Signal(10)
    for constant in range(0, 70):
        expr = times_constant(x, constant)
        assert "*" not in repr(expr), constant
        for value in (0, 1, 2, 5, 341, 682, 1023):
            assert _evaluate(expr, [(x, value)]) == value * constant, (constant, value)


def _evaluate(expr, values):
    """The value of the Amaranth expression ``expr`` with its signals set as ``values`` says
    (pairs of a signal and its value)."""
    dut = Module()
    out = Signal(len(Value.cast(expr)) + 1)
    dut.d.comb += out.eq(expr)
    result = []

    async def bench(ctx):
        for signal, value in values:
            ctx.set(signal, value)
        result.append(ctx.get(out))

    sim = Simulator(dut)
    sim.add_testbench(bench)
    sim.run()
    return result[0]
