"""Formal proofs of fxpgen's datapath and safety rules (``fxpgen prove``,
docs/formal.md): harnesses, their mutation twins, and the SymbiYosys runner."""
