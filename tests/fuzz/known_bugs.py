"""Rules that currently fail on some backend: (op, backend, rule) -> the bug report.

Each entry turns the matching ``test_rule`` item into ``xfail(strict=True)``: it must keep failing,
so a fix makes it XPASS (strict: an error) and the entry has to be removed here. Found by this suite
(see the reasons); do not weaken the checks instead.
"""

_NEGINF_INF_VALUE = (
    "sparse_attention: a used key whose logit is -inf because the key row holds +-inf (e.g. kv[s, d] = -inf "
    "with q[t, h, d] > 0) makes out[t, h, d] NaN (IEEE 0 * inf in the P.V product) instead of weighing 0: "
    "a row whose used logits are all -inf must give out 0 / lse -inf (README 'Non-finite logits'), and a "
    "-inf-logit key among finite ones must not change out; today out[..., d] is NaN on this backend"
)
_FP8_ROPE_NAN = (
    "FP8 record of a NaN rope value: the reference writes bf16 0xFFFF (torch's vectorised float -> bf16 "
    "cast in longattn.cache.fp8.quantize_rows) where the rule and the triton / ascend_sim kernels write "
    "0x7FC0, so FP8 records are not byte-identical across backends"
)

KNOWN_BUGS = {
    ("sparse_attention", "reference", "neginf_key_inf_value"): _NEGINF_INF_VALUE,
    ("sparse_attention", "triton", "neginf_key_inf_value"): _NEGINF_INF_VALUE,
    ("sparse_attention", "ascend_sim", "neginf_key_inf_value"): _NEGINF_INF_VALUE,
    ("sparse_attention", "triton", "fp8_nonfinite_key"): (
        "triton sparse_attention over an Fp8KVPool decodes the e4m3 NaN byte (0x7F / 0xFF, the record of a "
        "NaN in a nope dim) as a finite value: a used key whose record holds a NaN gives a finite out / lse "
        "instead of NaN / NaN (the reference, which dequantises with torch, gives NaN)"
    ),
    ("append_kv", "reference", "fp8_rope_nan"): _FP8_ROPE_NAN,
    ("compress_kv", "reference", "fp8_rope_nan"): _FP8_ROPE_NAN,
    ("compress_kv", "reference", "no_exception"): (
        "compress_kv on the reference raises RuntimeError ('unflatten: Provided sizes [0, 2] ...' in "
        "longattn.rope.apply_rope) when rope_inv_freq is empty (no RoPE dims), a call the interface accepts "
        "and the triton / ascend_sim kernels run"
    ),
}
