// SPDX-License-Identifier: Apache-2.0
// The signature audit (cann_signatures.h) against the emulator: it compiles, and the defaults match.
#include "test_common.h"  // the emulator, through ascend_c/common/ascendc_compat.h
// clang-format off
#include "cann_signatures.h"
// clang-format on

int main()
{
    EXPECT_TRUE(longattn_signatures::DefaultsMatch(), "Nd2NzParams / MrgSort4Info defaults differ from CANN 8.5.0");
    return emu_test::Finish("test_signatures");
}
