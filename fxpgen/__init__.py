"""fxpgen: fixed-point systolic-array accelerator generator, compiler and verifier."""
__version__ = "0.1.0"
