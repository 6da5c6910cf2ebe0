"""Rules that currently fail on some backend: (op, backend, rule) -> the bug report.

Each entry turns the matching ``test_rule`` item into ``xfail(strict=True)``: it must keep failing,
so a fix makes it XPASS (strict: an error) and the entry has to be removed here. Found by this suite
(see the reasons); do not weaken the checks instead.
"""

# Empty: every rule holds on every backend. History: the FP8 NaN decode of the Triton kernel, the NaN rope
# bytes of quantize_rows and the reference's empty RoPE table were fixed; a -inf-logit key holding inf
# was first listed here and then documented as IEEE (ops/sparse_attention/README.md).
KNOWN_BUGS: dict = {}
