// Stand-in for the header ascendc_library generates for kernel compress_pool (syntax check only).
#pragma once
#include "acl/acl.h"
template <class... Args>
uint32_t aclrtlaunch_compress_pool(uint32_t blockDim, aclrtStream stream, Args... args);
