"""bench/compiled_report.py: the per-kernel, per-architecture table of the offline compiles (the compiles
themselves run in tests/triton/test_triton_sm90_compile.py; here the table is built from records)."""

from bench import compiled_report as cr

RECORDS = {
    90: [
        {"name": "sparse bf16 D=512 {'BLOCK_H': 64}", "ok": True, "shared": 131072, "wgmma": 144, "mma_sync": 0,
         "cp_async": 68, "tma": 0, "dot_replication": 2,
         "ptxas": "0 bytes stack frame, 3794 bytes spill stores, 3992 bytes spill loads"},
        {"name": "jit sparse CSA decode T=64 {'BLOCK_H': 64}", "ok": True, "shared": 197632, "wgmma": 1,
         "cp_async": 1, "ptxas": "80 bytes spill stores"},
        {"name": "jit sparse HCA decode T=1", "ok": True, "skipped": "this triton's JIT binder differs"},
        {"name": "indexer fp8 logits", "ok": False, "error": "CompilationError: boom"},
    ],
    80: [
        {"name": "sparse bf16 D=512 {'BLOCK_H': 32}", "ok": True, "shared": 81920, "wgmma": 0, "mma_sync": 96,
         "cp_async": 0, "ptxas": "0 bytes spill stores"},
    ],
    "gfx942": [
        {"name": "sparse bf16 D=512 {'BLOCK_H': 32}", "ok": True, "shared": 16384, "mfma": 64,
         "vgpr_spills": 0, "sgpr_spills": 7, "vgprs": 237, "agprs": 0,
         "ptxas": "0 VGPRs spilled to scratch, 7 SGPRs spilled"},
    ],
}  # fmt: skip


def test_table_rows_cells_and_model_column():
    model = {"estimates": {"sparse CSA decode T=64": {"optimistic_us": 38.3, "pessimistic_us": 38.3},
                           "sparse HCA decode T=1": {"optimistic_us": 10.9, "pessimistic_us": 11.2}}}  # fmt: skip
    lines = cr.table(RECORDS, model, archs=(90, 80, "gfx942")).splitlines()
    assert lines[0] == "| kernel configuration | sm_90a | sm_80 | gfx942 | sm_90a model (H200) |"
    rows = {ln.split(" | ")[0][2:]: ln.split(" | ")[1:] for ln in lines[2:]}
    assert list(rows) == ["sparse bf16 D=512", "jit sparse CSA decode T=64", "jit sparse HCA decode T=1",
                          "indexer fp8 logits"]  # fmt: skip
    assert rows["sparse bf16 D=512"] == [
        "wgmma, 2x MMA work, cp.async, 3794 B spill, 128 KiB smem",
        "mma.sync, 0 B spill, 80 KiB smem",
        "MFMA, 0 VGPR spills (237 VGPRs), 7 SGPR spills, 16 KiB smem",
        " |",
    ]
    assert rows["jit sparse CSA decode T=64"][0].startswith("wgmma, cp.async, 80 B spill")
    assert rows["jit sparse CSA decode T=64"][1:] == ["-", "-", "38.3 us |"]
    assert rows["jit sparse HCA decode T=1"][0].startswith("not compiled (") and rows["jit sparse HCA decode T=1"][3]
    assert rows["indexer fp8 logits"][0] == "FAILS: CompilationError: boom"
