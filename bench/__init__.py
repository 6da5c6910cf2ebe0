"""longattn benchmarks: the measurement instrument (run from the repository root: ``python -m bench``).

Modules: ``cases`` (the case registry; ``cases_cache``: append_kv, compress_kv, cache_plan;
``cases_layer``: the HybridAttention layer), ``costs`` (FLOP / byte models), ``ceilings`` (measured
bandwidth and matmul rates), ``timing`` (timers, cache flush, peak memory), ``peers`` (dense and
third-party formulations on the same inputs), ``runner``, ``results`` (JSON schema), ``report``,
``plots``, ``goals``, ``cli``; ``demo`` (one 1M-token CSA decode step) and ``peakmem`` (RSS sampler).
Importing ``bench`` imports torch and longattn only.
"""
