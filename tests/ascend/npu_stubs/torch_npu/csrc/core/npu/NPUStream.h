// Stand-in for torch_npu's NPUStream.h: only getCurrentNPUStream().stream() (syntax check only).
#pragma once
#include "acl/acl.h"
namespace c10_npu {
struct NPUStream {
    aclrtStream stream() const;
};
NPUStream getCurrentNPUStream();
}  // namespace c10_npu
