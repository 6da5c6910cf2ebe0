// SPDX-License-Identifier: Apache-2.0
// longattn Ascend C CPU emulator - umbrella header.
//
// A clean-room, header-only C++17 emulation of the subset of the Ascend C API (CANN 8.5.0 level,
// Atlas A2/A3 = NPU arch 2201) used by longattn's kernels. Kernels include
// ascend_c/common/ascendc_compat.h, which includes this header when LONGATTN_ASCEND_EMU is
// defined and the real "kernel_operator.h" otherwise. See README.md in this directory for the
// contract (APIs, semantics and their sources, strict checks, blind spots).
#pragma once

#include "emu_types.h"     // qualifiers, half/bfloat16_t, enums, parameter structs
#include "emu_numeric.h"   // rounding-mode conversions
#include "emu_runtime.h"   // cores, fatal errors, local memories, hazard tracker
#include "emu_memory.h"    // LocalTensor, GlobalTensor, TPipe, TQue, TBuf, GetBlockIdx ...
#include "emu_sync.h"      // PipeBarrier, SetFlag/WaitFlag, CrossCore*, SyncAll, launchers
#include "emu_datacopy.h"  // DataCopy, DataCopyPad, atomics
#include "emu_vector.h"    // vector arithmetic, reductions, cast, compare/select, gather
#include "emu_sort.h"      // Sort32, MrgSort
#include "emu_cube.h"      // Nd2Nz DataCopy, LoadData, Mmad, Fixpipe, InitConstValue
