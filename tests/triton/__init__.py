"""Triton-specific tests: launch tiles, explicit split counts and configurations, pools past 2**31,
the offline sm_90 compile, dispatch of CUDA tensors, interpreter-specific checks. The op x backend tests
(every op's generic cases, the Triton backend included) are in tests/ops; the device logic is in
tests/helpers/device.py."""
