// SPDX-License-Identifier: Apache-2.0
// The emulator's per-launch work counters (longattn_emu::TakeLaunchCounters) as plain structs for the
// torch binding (bench/ascend_model.py's performance model reads them).
#include "ascend_c/emu/ascendc_emu.h"
#include "csrc/ascend_sim/launchers.h"

namespace longattn_ascend {

static_assert(kEmuPipes == longattn_emu::detail::kNumPipes, "pipe count of the emulator");

std::vector<EmuLaunchWork> TakeEmuLaunchWork()
{
    std::vector<EmuLaunchWork> out;
    for (const auto& l : longattn_emu::TakeLaunchCounters()) {
        EmuLaunchWork w;
        w.kind = l.kind;
        w.blockDim = l.blockDim;
        for (const auto& c : l.cores) {
            EmuCoreWork k;
            k.aic = c.aic;
            k.group = c.group;
            for (int p = 0; p < kEmuPipes; ++p) {
                k.ops[p] = c.ops[p];
                k.gmRead[p] = c.gmRead[p];
                k.gmWrite[p] = c.gmWrite[p];
            }
            k.ubRead = c.ubRead;
            k.ubWrite = c.ubWrite;
            k.macs = c.macs;
            k.fractals = c.fractals;
            w.cores.push_back(k);
        }
        out.push_back(std::move(w));
    }
    return out;
}

}  // namespace longattn_ascend
