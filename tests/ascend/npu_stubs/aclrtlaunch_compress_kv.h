// Stand-in for the header ascendc_library generates for kernel compress_kv (syntax check only).
#pragma once
#include "acl/acl.h"
template <class... Args>
uint32_t aclrtlaunch_compress_kv(uint32_t blockDim, aclrtStream stream, Args... args);
