// Stand-in for the header ascendc_library generates for kernel sparse_attention (syntax check only).
#pragma once
#include "acl/acl.h"
template <class... Args>
uint32_t aclrtlaunch_sparse_attention(uint32_t blockDim, aclrtStream stream, Args... args);
