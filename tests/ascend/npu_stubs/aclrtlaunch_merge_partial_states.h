// Stand-in for the header ascendc_library generates for kernel merge_partial_states (syntax check only).
#pragma once
#include "acl/acl.h"
template <class... Args>
uint32_t aclrtlaunch_merge_partial_states(uint32_t blockDim, aclrtStream stream, Args... args);
