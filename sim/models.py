"""Behavioural Verilog models of the FPGA primitives that the generators instantiate.

Elaborated for an FPGA family (:class:`hbfp_hw.rtl_gen.common.TargetFamily`), a generator may
instantiate that family's primitives (the MacTree's ``MULT18X18D`` and the systolic PEs'
``TRELLIS_FF`` copies of their swap bit on the ECP5). The models let
Verilator and Icarus run that netlist: :func:`hbfp_hw.sim.verify.verify` with ``family`` appends
:func:`models_for` to the Verilog. Only the subset the generators use is modelled, and any other
use fails the simulation: this checks how a generator wires a primitive against the primitive's
documented behaviour (Lattice TN1267, ECP5 and ECP5-5G sysDSP Usage Guide); it does not
replace the vendor's model.
"""

__all__ = ["MULT18X18D_MODEL", "TRELLIS_FF_MODEL", "FAMILIES", "models_for"]


def _mult18x18d():
    ins = ([f"A{i}" for i in range(18)] + [f"B{i}" for i in range(18)]
           + [f"C{i}" for i in range(18)]
           + ["SIGNEDA", "SIGNEDB", "SOURCEA", "SOURCEB", "CLK0", "CE0", "RST0"])
    outs = [f"P{i}" for i in range(36)]
    bus = lambda p, n: "{" + ", ".join(f"{p}{i}" for i in reversed(range(n))) + "}"  # noqa: E731
    return f"""
// MULT18X18D: 18x18 multiplier of the ECP5 sysDSP block. Modelled: the A and B input
// registers and the output register on CLK0/CE0/RST0 (synchronous reset), or none; the
// pipeline register and the shift/cascade inputs are not (their use fails the build).
module MULT18X18D #(
    parameter REG_INPUTA_CLK = "NONE",
    parameter REG_INPUTB_CLK = "NONE",
    parameter REG_OUTPUT_CLK = "NONE"
) (
    input {", ".join(ins)},
    output {", ".join(outs)}
);
    initial begin
        if ((REG_INPUTA_CLK != "NONE" && REG_INPUTA_CLK != "CLK0") ||
            (REG_INPUTB_CLK != "NONE" && REG_INPUTB_CLK != "CLK0") ||
            (REG_OUTPUT_CLK != "NONE" && REG_OUTPUT_CLK != "CLK0")) begin
            $display("MULT18X18D model: unsupported register clock");
            $finish;
        end
    end
    wire [17:0] a = {bus("A", 18)};
    wire [17:0] b = {bus("B", 18)};
    reg [17:0] a_q, b_q;
    reg [35:0] p_q;
    wire [17:0] a_in = (REG_INPUTA_CLK == "CLK0") ? a_q : a;
    wire [17:0] b_in = (REG_INPUTB_CLK == "CLK0") ? b_q : b;
    // Each operand is extended to 36 bits as its SIGNED input says; the product is exact.
    wire [35:0] a_ext = {{{{18{{SIGNEDA & a_in[17]}}}}, a_in}};
    wire [35:0] b_ext = {{{{18{{SIGNEDB & b_in[17]}}}}, b_in}};
    wire [35:0] product = a_ext * b_ext;
    always @(posedge CLK0) begin
        if (RST0) begin
            a_q <= 18'd0; b_q <= 18'd0; p_q <= 36'd0;
        end else if (CE0) begin
            a_q <= a; b_q <= b; p_q <= product;
        end
    end
    wire [35:0] p = (REG_OUTPUT_CLK == "CLK0") ? p_q : product;
    assign {bus("P", 36)} = p;
    wire _unused = &{{1'b0, SOURCEA, SOURCEB, {bus("C", 18)}}};
endmodule
"""


#: Verilog text of the ``MULT18X18D`` model.
MULT18X18D_MODEL = _mult18x18d()


#: Verilog text of the ``TRELLIS_FF`` model: the ECP5 fabric flip-flop in the one
#: configuration :func:`hbfp_hw.rtl_gen.common.ecp5_flip_flop` uses (always enabled, clocked
#: on the rising edge, initially 0, reset to 0 synchronously by LSR); any other configuration
#: fails the build.
TRELLIS_FF_MODEL = """
module TRELLIS_FF #(
    parameter GSR = "DISABLED",
    parameter CEMUX = "1",
    parameter CLKMUX = "CLK",
    parameter LSRMUX = "LSR",
    parameter REGSET = "RESET",
    parameter SRMODE = "LSR_OVER_CE"
) (
    input CLK, LSR, DI,
    output reg Q
);
    initial begin
        if (GSR != "DISABLED" || CEMUX != "1" || CLKMUX != "CLK" || LSRMUX != "LSR" ||
            REGSET != "RESET" || SRMODE != "LSR_OVER_CE") begin
            $display("TRELLIS_FF model: unsupported configuration");
            $finish;
        end
        Q = 1'b0;
    end
    always @(posedge CLK) Q <= LSR ? 1'b0 : DI;
endmodule
"""

#: Families whose primitives are modelled, and the models' Verilog.
FAMILIES = {"ecp5": MULT18X18D_MODEL + TRELLIS_FF_MODEL}


def models_for(family):
    """Return the Verilog of the primitive models of ``family`` (``""`` for None).

    Raises
    ------
    ValueError
        If ``family`` is not one of :data:`FAMILIES`.
    """
    if family is None:
        return ""
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {', '.join(sorted(FAMILIES))} or None, "
                         f"not {family!r}")
    return FAMILIES[family]
