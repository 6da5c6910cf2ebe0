// Stand-in for torch_npu's NPUStream.h: only getCurrentNPUStream().stream(need_empty) (syntax check only).
#pragma once
#include "acl/acl.h"
namespace c10_npu {
struct NPUStream {
    aclrtStream stream(bool need_empty = true) const;  // true: drains the task queue first
};
NPUStream getCurrentNPUStream();
}  // namespace c10_npu
