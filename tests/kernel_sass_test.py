"""benchmarks/kernel_sass.py reads ptxas' report and cuobjdump's listing (formats as they print)."""

from benchmarks import kernel_sass

PTXAS_LOG = """ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_runs_kernel' for 'sm_90a'
ptxas info    : Function properties for _runs_kernel
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 40 registers, used 1 barriers
ptxas info    : Compiling entry function '_run_sums_kernel' for 'sm_90a'
ptxas info    : Function properties for _run_sums_kernel
    1392 bytes stack frame, 8 bytes spill stores, 16 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers
"""


def _line(address: int, text: str) -> str:
    return f"        /*{address:04x}*/                   {text} ;   /* 0x000fe20000000800 */\n"


def test_largest_loop_is_the_longest_backward_branch_span():
    listing = "".join(
        [
            _line(0x00, "S2R R26, SR_TID.X"),
            _line(0x10, "STS.U16 [R1], R2"),  # before every loop: not counted
            _line(0x20, "HMMA.16816.F32.BF16 R4, R8, R12, R4"),  # the large loop: 0x20-0x60
            _line(0x30, "BAR.SYNC.DEFER_BLOCKING 0x0"),
            _line(0x40, "@P0 BRA 0x30"),  # a small loop inside it
            _line(0x50, "STS.U16 [R3], R2"),
            _line(0x60, "@P5 BRA 0x20"),
            _line(0x70, "@P6 BRA 0x90"),  # forward: not a loop
            _line(0x80, "EXIT"),
        ]
    )
    assert kernel_sass.largest_loop(listing) == {
        "loop_instructions": 5,
        "matrix_instructions": 1,
        "shared_stores": 1,
        "barriers": 1,
    }


def test_registers_and_spills_per_entry():
    names = kernel_sass._REGISTERS.findall(PTXAS_LOG)
    assert names == [("_runs_kernel", "40"), ("_run_sums_kernel", "255")]
    assert kernel_sass._SPILLS.findall(PTXAS_LOG) == [("0", "0"), ("8", "16")]
