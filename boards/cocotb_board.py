"""cocotb test module: a board top level (:class:`fxpgen.boards.top.BoardTop`)
under Verilator, its UART pins wired through cocotbext-uart to a pseudo-terminal,
and a host program talking to that terminal as to a board's serial port.

Job (from :func:`fxpgen.sim.rtl.run_cocotb`)::

    {"divisor": int,                  # clock cycles per UART bit in the design
     "host_argv": [str, ...],         # the host command; "{port}" becomes the pty
     "faults": [fault, ...],          # wire faults (fxpgen.boards.wire_faults.Fault.as_json)
     "max_cycles": int}

Result: ``{"returncode", "stdout", "stderr", "cycles", "host_bytes", "board_bytes",
"faults_applied", "timed_out"}`` (byte counts as sent, before faults). The clock is 10 ns, so the UART runs at 1e8/divisor baud
in simulated time; the host's timeouts are in wall-clock time.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
import tty

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, Timer
from cocotbext.uart import UartSink, UartSource

from fxpgen.boards.wire_faults import Fault, FaultyWire
from fxpgen.sim.rtl import deadline, load_job, write_result

CLOCK_NS = 10


@cocotb.test()
async def run_host(dut):
    job = load_job()
    end_time = deadline()
    divisor = int(job["divisor"])
    baud = 1e9 / (CLOCK_NS * divisor)
    Clock(dut.clk, CLOCK_NS, unit="ns").start()
    dut.uart_rx.value = 1
    dut.rst.value = 1
    await ClockCycles(dut.clk, 4)
    dut.rst.value = 0
    await ClockCycles(dut.clk, 4)

    source = UartSource(dut.uart_rx, baud=baud, bits=8, stop_bits=1)
    sink = UartSink(dut.uart_tx, baud=baud, bits=8, stop_bits=1)
    master, slave = os.openpty()
    tty.setraw(slave)
    os.set_blocking(master, False)
    port = os.ttyname(slave)
    out_f = tempfile.TemporaryFile()
    err_f = tempfile.TemporaryFile()
    argv = [a.replace("{port}", port) for a in job["host_argv"]]
    proc = subprocess.Popen(argv, stdout=out_f, stderr=err_f, stdin=subprocess.DEVNULL)

    faults = [Fault.from_json(f) for f in job.get("faults", [])]
    to_board = FaultyWire([f for f in faults if f.direction == "host"])
    to_host = FaultyWire([f for f in faults if f.direction == "board"])
    host_bytes = board_bytes = 0
    byte_ns = 10 * CLOCK_NS * divisor
    poll = Timer(8 * byte_ns, unit="ns")
    max_cycles = int(job.get("max_cycles", 50_000_000))
    cycles = 0
    timed_out = False
    while proc.poll() is None:
        await poll
        cycles += 8 * 10 * divisor
        try:
            data = bytearray(os.read(master, 4096))
        except (BlockingIOError, OSError):
            data = bytearray()
        if data:
            host_bytes += len(data)
            arriving = to_board.pass_bytes(bytes(data))
            if arriving:
                await source.write(arriving)
        if not sink.empty():
            reply = sink.read_nowait()
            board_bytes += len(reply)
            arriving = to_host.pass_bytes(bytes(reply))
            if arriving:
                os.write(master, arriving)
        if cycles > max_cycles or (end_time and time.time() > end_time):
            timed_out = True
            proc.kill()
            break
    proc.wait()
    out_f.seek(0)
    err_f.seek(0)
    write_result({"returncode": proc.returncode, "stdout": out_f.read().decode(errors="replace"),
                  "stderr": err_f.read().decode(errors="replace"), "cycles": cycles,
                  "host_bytes": host_bytes, "board_bytes": board_bytes,
                  "faults_applied": [f.as_json() for f in to_board.applied + to_host.applied],
                  "timed_out": timed_out})
    os.close(master)
    os.close(slave)
