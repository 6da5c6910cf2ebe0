"""Standing adversarial (property / fuzz) suite: every public op on every CPU backend vs tests/oracle.py.

Layout:
    common.py     special values, layouts, fp32 non-finite classes, the per-example ``Report``
    op_*.py       one module per op family: hypothesis strategy, targeted examples, build, run, check
    ops.py        the registry of ops (name -> module) and which backends implement each on CPU
    known_bugs.py the rules that currently fail on some backend (xfail(strict=True) with the reason)
    worker.py     ``python -m tests.fuzz.worker --op X --backend Y --examples N --seed S``: runs N
                  hypothesis examples in this process, logging each example before it runs
    runner.py     the parent side: launches workers (in parallel), restarts after a crash, aggregates
    test_fuzz.py  the pytest items: per (op, backend) "runs clean", per (op, backend, rule) "holds"
"""
