// Stand-in for torch_npu's OpCommand.h: only OpCommand::RunOpApi, the entry custom ops use to run a
// launch through torch_npu's task queue (syntax check only).
#pragma once
#include <functional>
#include <string>
namespace at_npu {
namespace native {
class OpCommand {
public:
    static void RunOpApi(const std::string& op_name, std::function<int()> func, bool sync = false);
};
}  // namespace native
}  // namespace at_npu
