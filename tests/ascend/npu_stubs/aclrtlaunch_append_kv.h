// Stand-in for the header ascendc_library generates for kernel append_kv (syntax check only).
#pragma once
#include "acl/acl.h"
template <class... Args>
uint32_t aclrtlaunch_append_kv(uint32_t blockDim, aclrtStream stream, Args... args);
