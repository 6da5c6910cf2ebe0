// Stand-in for CANN's acl/acl.h: only the names csrc/ascend_npu uses (syntax check only).
#pragma once
#include <cstdint>
typedef void* aclrtStream;
typedef int aclError;
enum aclDeviceInfo { ACL_DEVICE_INFO_AI_CORE_NUM = 0, ACL_DEVICE_INFO_VECTOR_CORE_NUM = 1 };
aclError aclrtGetDevice(int32_t* deviceId);
aclError aclGetDeviceCapability(uint32_t deviceId, aclDeviceInfo info, int64_t* value);
#define ACLRT_LAUNCH_KERNEL(kernel) aclrtlaunch_##kernel
