// Stand-in for the header ascendc_library generates for kernel apply_attention_sink (syntax check only).
#pragma once
#include "acl/acl.h"
template <class... Args>
uint32_t aclrtlaunch_apply_attention_sink(uint32_t blockDim, aclrtStream stream, Args... args);
