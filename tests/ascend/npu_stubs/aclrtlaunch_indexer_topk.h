// Stand-in for the header ascendc_library generates for kernel indexer_topk (syntax check only).
#pragma once
#include "acl/acl.h"
template <class... Args>
uint32_t aclrtlaunch_indexer_topk(uint32_t blockDim, aclrtStream stream, Args... args);
