"""Boards: the UART protocol, the bridge's blocks, PLL settings, every board's top
level elaborating, and the whole UART path in simulation (board top level under
cocotb + Verilator behind a pseudo-terminal, driven by the real host commands)."""

import json
import random
import struct
import sys

import numpy as np
import pytest
from amaranth import *
from amaranth.sim import Simulator

from fxpgen.boards import protocol
from fxpgen.boards.bridge import WordBuffer, crc16_next
from fxpgen.boards.wire_faults import KINDS, Fault, FaultyWire, random_faults
from fxpgen.boards.pll import ecp5_pll_settings, ice40_pll_settings
from fxpgen.boards.platforms import BOARDS
from fxpgen.boards.protocol import FrameDecoder, FrameType, crc16, encode_frame
from fxpgen.boards.uart import UartRx, UartTx, uart_divisor
from fxpgen.config import CoreConfig


def run(dut, bench, comb=False):
    sim = Simulator(dut)
    if not comb:
        sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()


# -- protocol ---------------------------------------------------------------------

def test_crc16_is_ccitt_false():
    assert crc16(b"123456789") == 0x29B1
    assert crc16(b"") == 0xFFFF


def test_frames_round_trip_and_resynchronize(seed):
    rng = random.Random(seed)
    frames = [(rng.choice(list(FrameType)), rng.randrange(256), bytes(rng.randrange(256) for _ in range(n)))
              for n in (0, 1, 26, 300)]
    wire = b"\x00\x13" + b"".join(encode_frame(*f) for f in frames)
    damaged = bytearray(encode_frame(FrameType.ACK, 9, b"\x01\x02\x03\x04\x05"))
    damaged[6] ^= 0x40
    dec = FrameDecoder()
    got = []
    for k in range(0, len(wire), 7):             # arbitrary chunking
        got += dec.feed(wire[k:k + 7])
    assert [(g.type, g.seq, g.payload) for g in got] == frames
    assert all(g.crc_ok for g in got)
    bad = dec.feed(bytes(damaged))
    assert len(bad) == 1 and not bad[0].crc_ok


def _faulty_wire(rng: random.Random, frames: list[bytes]) -> tuple[bytes, list[int]]:
    """The frames on a wire with one fault in every third frame (a bit flip, a byte
    dropped or a garbage byte inserted, or garbage between frames); the indices of
    the frames left intact."""
    wire, intact = bytearray(), []
    for i, f in enumerate(frames):
        f = bytearray(f)
        kind = rng.choice(["flip", "drop", "insert", "between"]) if i % 3 == 1 else None
        pos = rng.randrange(1, len(f))          # byte 0 is SYNC: a byte before it is "between"
        if kind == "flip":
            f[pos] ^= 1 << rng.randrange(8)
        elif kind == "drop":
            del f[pos]
        elif kind == "insert":
            f.insert(pos, rng.randrange(256))
        elif kind == "between":
            wire += bytes([protocol.SYNC, *(rng.randrange(256) for _ in range(rng.randrange(1, 9)))])
        if kind in (None, "between"):
            intact.append(i)
        wire += f
    return bytes(wire), intact


def test_decoder_delivers_every_intact_frame_around_faults(seed):
    """Whatever a fault does to one frame (a length bit flipped larger or smaller, a
    byte lost or added, garbage with a SYNC byte between frames), every frame the
    fault did not touch comes out, in order and checking, and no damaged frame is
    taken for a good one (every frame that checks is one that was sent) beyond
    what the CRC lets through: at most one trial in a run."""
    rng = random.Random(seed)
    forged = 0
    for trial in range(200):
        frames = [(rng.choice(list(FrameType)), rng.randrange(256),
                   bytes(rng.randrange(256) for _ in range(rng.choice([0, 1, 5, 26, 300]))))
                  for _ in range(9)]
        wire, intact = _faulty_wire(rng, [encode_frame(*f) for f in frames])
        dec, got = FrameDecoder(), []
        k = 0
        while k < len(wire):
            n = rng.randrange(1, 40)
            got += dec.feed(wire[k:k + n])
            k += n
        good = [(g.type, g.seq, g.payload) for g in got if g.crc_ok]
        if any(g not in frames for g in good):
            # A byte lost or added leaves a frame that checks by chance one time in
            # 65,536 (the CRC's strength), and that frame may claim the next ones.
            forged += 1
            continue
        # A fault may, rarely, leave a frame that still checks (a byte inserted
        # before the last one and equal to it): then it is the frame as sent.
        assert _in_order_with_every_intact(good, frames, intact), f"trial {trial}"
    assert forged <= 1, f"{forged} damaged frames checked in 200 trials (about 300 faults)"


def _in_order_with_every_intact(good: list, frames: list, intact: list[int]) -> bool:
    """Whether ``good`` is ``frames`` in order with some damaged ones left out
    (frames may repeat, so this tries every way of matching them)."""
    reach = {0}                                 # frames of `good` explained so far
    for i, f in enumerate(frames):
        reach = ({j + 1 for j in reach if j < len(good) and good[j] == f}
                 | (set() if i in intact else reach))
    return len(good) in reach


def test_decoder_does_not_wait_out_a_damaged_length():
    """A reply whose length was flipped larger is given up as soon as the next reply
    has arrived whole: the host is not left waiting for bytes that never come."""
    first = bytearray(encode_frame(FrameType.ACK, 1, b"\x01\x00\x02\x00\x02"))
    first[4] ^= 0x08                           # length high byte: 5 -> 2053
    second = encode_frame(FrameType.STATUS_REPLY, 2, b"\x07" * 10)
    got = FrameDecoder().feed(bytes(first) + second)
    assert [(g.type, g.seq, g.crc_ok) for g in got] == [(FrameType.ACK, 1, False),
                                                         (FrameType.STATUS_REPLY, 2, True)]


def test_info_and_status_payloads_round_trip():
    cfg = CoreConfig(4, 8, acc_width=24, counter_width=24, spad_depth=1024, wbuf_depth=128,
                     acc_depth=512, table_depth=8)
    info = protocol.decode_info(protocol.info_payload(cfg, 512, 2048, 77))
    assert info == {"config": cfg, "insn_buffer": 512, "data_buffer": 2048, "rom_insns": 77}
    payload = (struct.pack("<BBI", 2, 0, 5) + b"".join(v.to_bytes(3, "little") for v in range(10, 16))
               + struct.pack("<HIHH", 3, 40, 100, 200))
    st = protocol.decode_status(cfg, payload)
    assert st["state"] == 2 and st["error_pc"] == 5 and st["halts"] == 3 and st["results"] == 40
    assert list(st["counters"].values()) == list(range(10, 16))
    with pytest.raises(protocol.ProtocolError, match="STATUS reply of 3 bytes"):
        protocol.decode_status(cfg, b"abc")
    with pytest.raises(protocol.ProtocolError, match="not an fxpgen board"):
        protocol.decode_info(b"XXXX" + bytes(protocol.INFO_LENGTH - 4))


def test_hardware_crc_matches_protocol(seed):
    crc, byte, out = Signal(16), Signal(8), Signal(16)
    m = Module()
    m.d.comb += out.eq(crc16_next(crc, byte))
    rng = random.Random(seed)
    data = bytes(rng.randrange(256) for _ in range(64))

    async def bench(ctx):
        value = 0xFFFF
        for b in data:
            ctx.set(crc, value)
            ctx.set(byte, b)
            value = ctx.get(out)
        assert value == crc16(data)
    run(m, bench, comb=True)


# -- UART and word buffer ------------------------------------------------------------

def test_uart_divisor_checks_the_rate():
    assert uart_divisor(24e6, 1_000_000) == 24
    with pytest.raises(ValueError, match="too fast"):
        uart_divisor(12e6, 6_000_000)
    with pytest.raises(ValueError, match="off"):
        uart_divisor(12e6, 1_400_000)


@pytest.mark.parametrize("divisor", [4, 7])
def test_uart_loopback(divisor, seed):
    """Bytes through the transmitter and receiver (line between them), with a
    corrupted stop bit counted as a framing error and the byte dropped."""
    m = Module()
    m.submodules.tx = tx = UartTx(divisor)
    m.submodules.rx = rx = UartRx(divisor)
    spoil = Signal()
    m.d.comb += rx.rx.eq(tx.tx & ~spoil)
    rng = random.Random(seed)
    data = [rng.randrange(256) for _ in range(12)]

    async def bench(ctx):
        got = []
        for k, b in enumerate(data):
            ctx.set(tx.data.payload, b)
            ctx.set(tx.data.valid, 1)
            await ctx.tick().until(tx.data.ready)
            ctx.set(tx.data.valid, 0)
            for t in range(11 * divisor):
                # Byte 5's stop bit held low (bit period 9 of its frame).
                ctx.set(spoil, k == 5 and 9 * divisor + 1 <= t < 10 * divisor - 1)
                await ctx.tick()
                if ctx.get(rx.data.valid):
                    got.append(ctx.get(rx.data.payload))
        assert got == data[:5] + data[6:]
        assert ctx.get(rx.framing_errors) == 1
    run(m, bench)


def test_word_buffer_commits_whole_frames_only():
    dut = WordBuffer(depth=16, word_bytes=3, width=20)

    async def write(ctx, data):
        for b in data:
            ctx.set(dut.wr_en, 1)
            ctx.set(dut.wr_data, b)
            await ctx.tick()
        ctx.set(dut.wr_en, 0)

    async def pulse(ctx, sig):
        ctx.set(sig, 1)
        await ctx.tick()
        ctx.set(sig, 0)

    async def bench(ctx):
        ctx.set(dut.out.ready, 1)
        await write(ctx, [1, 2, 3, 4, 5, 6])
        assert ctx.get(dut.free) == 10
        await pulse(ctx, dut.rollback)            # a frame that failed its checksum
        assert ctx.get(dut.free) == 16
        for _ in range(10):
            await ctx.tick()
            assert not ctx.get(dut.out.valid)
        await write(ctx, [0x11, 0x22, 0x33, 0x44, 0x55, 0x66])
        await pulse(ctx, dut.commit)
        words = []
        for _ in range(30):
            if ctx.get(dut.out.valid):
                words.append(ctx.get(dut.out.payload))
            await ctx.tick()
        assert words == [0x332211 & 0xFFFFF, 0x665544 & 0xFFFFF]
        assert ctx.get(dut.free) == 16
    run(dut, bench)


# -- PLLs and boards -----------------------------------------------------------------

def test_pll_settings_reach_the_targets():
    # Reference values of the vendors' tools (icepll -i 12 -o 24; ecppll -i 25 -o 100).
    s = ice40_pll_settings(12e6, 24e6)
    assert (s["DIVR"], s["DIVF"], s["DIVQ"], s["FILTER_RANGE"], s["f_out"]) == (0, 63, 5, 1, 24e6)
    e = ecp5_pll_settings(25e6, 100e6)
    assert (e["CLKI_DIV"], e["CLKFB_DIV"], e["CLKOP_DIV"], e["f_out"]) == (1, 4, 6, 100e6)
    for f in (30e6, 36e6, 48e6):
        assert abs(ice40_pll_settings(12e6, f)["f_out"] - f) / f < 0.01
    with pytest.raises(ValueError, match="no iCE40 PLL setting"):
        ice40_pll_settings(1e6, 24e6)


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_every_board_elaborates(name, tmp_path):
    """Each board's design elaborates on its platform and its build files are
    written (without running any tool)."""
    from fxpgen.boards.build import prepare_board
    b = BOARDS[name]
    cfg = CoreConfig(2, 2, spad_depth=256, wbuf_depth=64, acc_depth=256)
    plan, design = prepare_board(b, cfg, tmp_path, clock_hz=b.clock_hz, baud=1_000_000)
    files = {p.name for p in tmp_path.iterdir()}
    assert any(f.startswith("build_fxpgen") for f in files), files
    netlist = next((tmp_path / f).read_text() for f in sorted(files)
                   if f in ("fxpgen.il", "fxpgen.v"))
    assert "fxpgen_core" in netlist or "core" in netlist
    if b.family == "ice40":
        assert "SB_PLL40_PAD" in netlist
    elif b.family == "ecp5":
        assert "EHXPLLL" in netlist


def test_unknown_board_is_named():
    from fxpgen.boards.platforms import board
    with pytest.raises(ValueError, match="unknown board 'de0'.*icebreaker"):
        board("de0")


# -- the whole UART path in simulation ---------------------------------------------

SIM_DIVISOR = 8


@pytest.fixture(scope="module")
def small_board():
    from fxpgen.boards.board_rtl import board_model
    cfg = CoreConfig(2, 2, spad_depth=256, wbuf_depth=64, acc_depth=256)
    return cfg, board_model(cfg, SIM_DIVISOR, insn_buffer=512, data_buffer=512)


@pytest.mark.rtl
def test_gemm_over_uart_survives_corrupted_frames(small_board):
    """``fxpgen check --port`` against the simulated board: bit-identical to the
    golden model, though two frames are damaged on the wire (a length byte made
    larger, which leaves the board waiting until it drops the frame, and a later
    byte). Each is rejected, reported by the host and resent; none is executed twice."""
    from fxpgen.boards.board_rtl import run_host_on_board
    _, model = small_board
    # Host stream: INFO (7 bytes), RESET (7), STATUS (7), then the first INSN frame,
    # whose length's high byte is byte 25 (its payload is 494 bytes: 0x01EE).
    r = run_host_on_board(model, SIM_DIVISOR,
                          [sys.executable, "-m", "fxpgen.app.cli", "check", "--port", "{port}",
                           "--gemm", "12x4x6", "--seed", "4", "--timeout", "20", "--json"],
                          faults=[Fault("host", 25, "flip", 0x02), Fault("host", 700, "flip", 0x10)],
                          timeout_s=600)
    assert r["returncode"] == 0, r["stderr"][-2000:]
    report = json.loads(r["stdout"])
    assert report["bit_identical"]
    assert report["insns_executed"] == report["instructions"]
    assert len(report["frames_rejected"]) >= 2
    assert any("TIMEOUT" in why for why in report["frames_rejected"]), report["frames_rejected"]
    assert [f[1] for f in r["faults_applied"]] == [25, 700]


def test_faulty_wire_applies_every_kind_at_its_offset():
    """Offsets count the bytes as sent, across chunks of any size."""
    wire = FaultyWire([Fault("host", 2, "flip", 0x01), Fault("host", 4, "drop", 2),
                       Fault("host", 7, "insert", (0xA5, 9)), Fault("host", 9, "burst", (0x10, 0x20))])
    got = wire.pass_bytes(bytes(range(5))) + wire.pass_bytes(bytes(range(5, 12)))
    assert list(got) == [0, 1, 3, 3, 6, 0xA5, 9, 7, 8, 9 ^ 0x10, 10 ^ 0x20, 11]
    assert [f.at for f in wire.applied] == [2, 4, 7, 9]


def test_random_faults_cover_both_directions_and_every_kind(seed):
    faults = random_faults(random.Random(seed), 400, 1000, 1000)
    assert {f.kind for f in faults} == set(KINDS)
    assert {f.direction for f in faults} == {"host", "board"}
    assert all(Fault.from_json(json.loads(json.dumps(f.as_json()))) == f for f in faults)


@pytest.mark.rtl
def test_uart_fault_campaign_gives_right_results_or_named_errors(seed):
    """Random faults in both directions (flips, bursts, lost bytes and replies,
    garbage) while ``fxpgen check --port`` runs a GEMM on the simulated board: no
    wrong result, no hang; the faults are corrected by resends and reruns."""
    from bench.uart_faults import campaign
    t = campaign(3, 6, seed, network=False, log=print)
    assert t.faults >= 3 * 3                    # most drawn faults land inside the streams
    assert t.wrong == 0 and t.hangs == 0, t
    assert t.right + len(t.named_errors) == 3
    assert t.resends + t.reruns > 0


@pytest.mark.slow
@pytest.mark.rtl
def test_uart_fault_campaign_on_a_network(seed):
    """The same campaign on the digits CNN, two images a run."""
    from bench.uart_faults import campaign
    t = campaign(4, 8, seed, network=True, log=print)
    assert t.wrong == 0 and t.hangs == 0, t
    assert t.right + len(t.named_errors) == 4


@pytest.mark.rtl
def test_corrupted_frame_is_not_executed(small_board, tmp_path):
    """A HALT sent with a bad checksum is refused (NAK CRC) and the core stays idle;
    the same frame intact runs. A program that faults is reported with its error."""
    from fxpgen.boards.board_rtl import run_host_on_board
    _, model = small_board
    script = tmp_path / "host.py"
    script.write_text(
        "import json, sys\n"
        "from fxpgen.boards.host import BoardLink, open_serial\n"
        "from fxpgen.boards.protocol import FrameType, encode_frame, FrameDecoder\n"
        "from fxpgen.isa import Instruction, Opcode, INSN_BYTES\n"
        "link = BoardLink(open_serial(sys.argv[1], 1000000, 20), timeout=20)\n"
        "halt = Instruction(Opcode.HALT).encode(link.cfg).to_bytes(INSN_BYTES, 'little')\n"
        "bad = bytearray(encode_frame(FrameType.INSN, 200, halt)); bad[-1] ^= 0xFF\n"
        "link.port.write(bytes(bad))\n"
        "import time; dec = FrameDecoder(); frames = []; t = time.time()\n"
        "while not frames and time.time() - t < 20: frames = dec.feed(link.port.read(64))\n"
        "before = link.status()\n"
        "run = link.execute([Instruction(Opcode.HALT).encode(link.cfg)], [], n_results=0)\n"
        "from fxpgen.isa import Addr, Mem\n"
        "bad = Instruction(Opcode.LOAD, {'mem': Mem.SPAD.value}, z=Addr(link.cfg.spad_depth))\n"
        "try:\n"
        "    link.execute([bad.encode(link.cfg), Instruction(Opcode.HALT).encode(link.cfg)], [0],\n"
        "                 n_results=0)\n"
        "    error = None\n"
        "except Exception as e:\n"
        "    error = str(e)\n"
        "print(json.dumps({'reply': [frames[0].type, frames[0].seq, list(frames[0].payload)],\n"
        "                  'before': before, 'after': run.status, 'error': error}))\n")
    r = run_host_on_board(model, SIM_DIVISOR, [sys.executable, str(script), "{port}"], timeout_s=600)
    assert r["returncode"] == 0, r["stderr"][-2000:]
    out = json.loads(r["stdout"])
    assert out["reply"] == [FrameType.NAK, 200, [protocol.NakReason.CRC]]
    assert out["before"]["state"] == 0 and out["before"]["counters"]["insns"] == 0
    assert out["before"]["halts"] == 0
    assert out["after"]["state"] == 2 and out["after"]["halts"] == 1
    assert out["error"] and "ADDRESS at instruction 1" in out["error"], out["error"]


@pytest.mark.rtl
def test_resend_of_a_frame_that_filled_the_buffer_is_acknowledged(small_board, tmp_path):
    """The host resends a stream frame whose ACK it lost; the frame's own words have
    filled the buffer (the core waits on a LOAD with no data). The board must ACK the
    duplicate, not refuse it as FULL (the host would then send the words again)."""
    from fxpgen.boards.board_rtl import run_host_on_board
    _, model = small_board
    script = tmp_path / "host.py"
    script.write_text(
        "import json, sys, time\n"
        "from fxpgen.boards.host import BoardLink, open_serial\n"
        "from fxpgen.boards.protocol import FrameType, FrameDecoder, encode_frame\n"
        "from fxpgen.isa import Addr, Instruction, Mem, Opcode, INSN_BYTES\n"
        "link = BoardLink(open_serial(sys.argv[1], 1000000, 20), timeout=20)\n"
        "link.reset()\n"
        "wait = Instruction(Opcode.LOAD, {'mem': Mem.SPAD.value}, z=Addr(0)).encode(link.cfg)\n"
        "halt = Instruction(Opcode.HALT).encode(link.cfg)\n"
        "n = link.info['insn_buffer'] // INSN_BYTES\n"
        "payload = b''.join(w.to_bytes(INSN_BYTES, 'little') for w in [wait] + [halt] * (n - 1))\n"
        "replies = []\n"
        "for attempt in range(2):\n"
        "    link.port.write(encode_frame(FrameType.INSN, 77, payload))\n"
        "    dec, frames, t = FrameDecoder(), [], time.time()\n"
        "    while not frames and time.time() - t < 20: frames = dec.feed(link.port.read(64))\n"
        "    replies.append([frames[0].type, frames[0].seq, list(frames[0].payload[:1])])\n"
        "print(json.dumps({'replies': replies, 'status': link.status()}))\n")
    r = run_host_on_board(model, SIM_DIVISOR, [sys.executable, str(script), "{port}"], timeout_s=600)
    assert r["returncode"] == 0, r["stderr"][-2000:]
    out = json.loads(r["stdout"])
    assert [rep[:2] for rep in out["replies"]] == [[FrameType.ACK, 77], [FrameType.ACK, 77]], out
    assert out["status"]["state"] == 1                   # running: the LOAD waits for data


@pytest.fixture(scope="module")
def digits_4x4(tmp_path_factory):
    from click.testing import CliRunner
    from fxpgen.app.cli import main
    from fxpgen.models import digits_assets
    out = tmp_path_factory.mktemp("digits4x4")
    a = digits_assets()
    res = CliRunner().invoke(main, ["compile", str(a["model"]), "--calib", str(a["calib"]),
                                    "--rows", "4", "--cols", "4", "-o", str(out)])
    assert res.exit_code == 0, res.output
    x = np.load(a["test_x"])[:2]
    np.save(out / "x.npy", x)
    return out


@pytest.mark.slow
@pytest.mark.rtl
@pytest.mark.parametrize("baked", [False, True], ids=["streamed", "baked"])
def test_network_over_uart_is_bit_identical(digits_4x4, baked, tmp_path):
    """``fxpgen run --engine board`` on the simulated board: the digits CNN, program
    and weights sent over the UART (or baked into ROM, only the images sent),
    outputs bit-identical to the golden model."""
    from fxpgen.compiler.program import load_program
    from fxpgen.boards.board_rtl import board_model, run_host_on_board
    from fxpgen.boards.top import baked_parts
    prog = load_program(digits_4x4 / "program.fxp")
    model = board_model(prog.cfg, SIM_DIVISOR, baked=baked_parts(prog) if baked else None)
    argv = [sys.executable, "-m", "fxpgen.app.cli", "run", str(digits_4x4), "--input",
            str(digits_4x4 / "x.npy"), "--engine", "board", "--port", "{port}", "--timeout", "30",
            "--json"] + (["--baked"] if baked else [])
    r = run_host_on_board(model, SIM_DIVISOR, argv, timeout_s=1800)
    assert r["returncode"] == 0, r["stderr"][-2000:]
    res = json.loads(r["stdout"])
    assert res["golden_identical"]
    assert len(res["outputs"]) == 2
    if not baked:
        assert len(res["layers"]) >= 5 and all(l["cycles"] > 0 for l in res["layers"])
    # Baked: only the images (and a few control frames) crossed the wire.
    wire = r["host_bytes"]
    program_bytes = len(prog.words) * 26
    assert (wire < program_bytes) if baked else (wire > program_bytes)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["icebreaker", "ulx3s-85f"])
def test_bitstream_build(name, tmp_path):
    """``fxpgen build --board NAME`` with the board's default core: a bitstream and a
    report whose resources fit the device and whose clock meets its target (minutes
    per board; the YoWASP toolchain from PyPI)."""
    from click.testing import CliRunner
    from fxpgen.app.cli import main
    res = CliRunner().invoke(main, ["build", "--board", name, "-o", str(tmp_path), "--json"])
    assert res.exit_code == 0, res.output[-3000:]
    report = json.loads(res.output[res.output.index("{"):])
    assert report["built"] and (tmp_path / report["bitstream"]).stat().st_size > 10_000
    for what, u in report["utilization"].items():
        assert 0 <= u["used"] <= u["available"], what
    assert report["utilization"]["dsp"]["used"] >= BOARDS[name].config.rows * BOARDS[name].config.cols
    assert report["timing_met"], report["fmax"]
