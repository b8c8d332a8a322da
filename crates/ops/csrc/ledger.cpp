// The traffic ledger: libtorch's RecordFunction callbacks count the operators a stretch of work
// runs and the bytes of the tensors they read and write. Built into brainfloat-ops (the Rust
// side) and, by scripts/pytorch_reference.py --ledger, into a shared library that PyTorch loads,
// so that both sides are counted by the same rules:
//
// - what a GPU would launch counts: an operator libtorch has a CUDA kernel for counts as one
//   (and the operators its CPU twin calls inside it do not: `_fused_rms_norm` is one CUDA kernel
//   and a composition on the CPU); an operator without one (a composite) counts through the
//   operators it calls, and one that calls none counts as one;
// - views (every output shares an input's storage and the operator writes no argument, as
//   `aten::view`, `aten::transpose`) and allocations (`aten::empty*`) move no data and are not
//   counted;
// - bytes read are the input tensors' sizes, bytes written the outputs' or, where more, those
//   of the arguments the schema marks written (an in-place or `out=` operator's destination,
//   `_fused_adam_`'s lists, which it returns none of); a destination counts among both, as it
//   is read and written.

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/ivalue.h>
#include <ATen/record_function.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <vector>

namespace {

struct Totals {
    std::atomic<int64_t> launches{0};
    std::atomic<int64_t> bytes_read{0};
    std::atomic<int64_t> bytes_written{0};
};

Totals totals;

// The same totals by operator name, for the ledger's breakdown.
struct OperatorTotals {
    int64_t launches = 0;
    int64_t bytes_read = 0;
    int64_t bytes_written = 0;
};
std::mutex by_operator_lock;
std::map<std::string, OperatorTotals> by_operator;

void add(const std::string& name, int64_t read, int64_t written) {
    totals.launches += 1;
    totals.bytes_read += read;
    totals.bytes_written += written;
    std::lock_guard<std::mutex> guard(by_operator_lock);
    OperatorTotals& entry = by_operator[name];
    entry.launches += 1;
    entry.bytes_read += read;
    entry.bytes_written += written;
}
std::atomic<bool> installed{false};
std::atomic<bool> counting{false};
at::CallbackHandle handle = 0;

struct Frame : at::ObserverContext {
    // Inside an operator that counts as one launch: not counted itself.
    bool inside_launch = false;
    // An operator with a CUDA kernel: one launch, whatever runs inside it.
    bool launch = false;
    // Its schema marks an argument written (in place, or `out=`), and their bytes.
    bool writes = false;
    int64_t bytes_of_written_arguments = 0;
    std::vector<bool> written_argument;
    bool has_child = false;
    int64_t bytes_read = 0;
    std::vector<const void*> input_storages;
};

thread_local std::vector<Frame*> open_frames;

// Whether libtorch has a CUDA kernel for the operator `fn` records, and whether its schema
// writes an argument.
void describe(const at::RecordFunction& fn, Frame* frame) {
    auto name = fn.operator_name();
    if (!name) return;
    auto op = c10::Dispatcher::singleton().findOp(*name);
    if (!op) return;
    frame->launch = op->hasKernelForDispatchKey(c10::DispatchKey::CUDA);
    for (const c10::Argument& argument : op->schema().arguments()) {
        const c10::AliasInfo* alias = argument.alias_info();
        bool written = alias && alias->isWrite();
        frame->written_argument.push_back(written);
        frame->writes = frame->writes || written;
    }
}

int64_t tensor_bytes(const at::Tensor& t) {
    return t.defined() ? static_cast<int64_t>(t.numel() * t.element_size()) : 0;
}

const void* storage_of(const at::Tensor& t) {
    return t.defined() && t.has_storage() ? t.storage().unsafeGetStorageImpl() : nullptr;
}

template <typename F>
void each_tensor(const c10::IValue& value, F&& visit) {
    if (value.isTensor()) {
        visit(value.toTensor());
    } else if (value.isTensorList()) {
        for (const at::Tensor& t : value.toTensorVector()) visit(t);
    } else if (value.isList()) {
        // Other lists, optional tensors' among them (`None` items are skipped).
        for (const c10::IValue& item : value.toListRef()) each_tensor(item, visit);
    }
}

std::unique_ptr<at::ObserverContext> on_start(const at::RecordFunction& fn) {
    auto frame = std::make_unique<Frame>();
    if (!open_frames.empty()) {
        Frame* parent = open_frames.back();
        parent->has_child = true;
        frame->inside_launch = parent->inside_launch || parent->launch;
    }
    open_frames.push_back(frame.get());
    if (frame->inside_launch) return frame;
    describe(fn, frame.get());
    auto inputs = fn.inputs();
    for (size_t i = 0; i < inputs.size(); i++) {
        bool written = i < frame->written_argument.size() && frame->written_argument[i];
        each_tensor(inputs[i], [&](const at::Tensor& t) {
            frame->bytes_read += tensor_bytes(t);
            if (written) frame->bytes_of_written_arguments += tensor_bytes(t);
            frame->input_storages.push_back(storage_of(t));
        });
    }
    return frame;
}

void on_end(const at::RecordFunction& fn, at::ObserverContext* context) {
    auto* frame = static_cast<Frame*>(context);
    if (!open_frames.empty() && open_frames.back() == frame) open_frames.pop_back();
    if (frame->inside_launch || (frame->has_child && !frame->launch)) return;
    std::string name = fn.name();
    if (name.rfind("aten::empty", 0) == 0) return;
    int64_t written = 0;
    bool all_alias = true;
    bool any_output = false;
    for (const c10::IValue& output : fn.outputs()) {
        each_tensor(output, [&](const at::Tensor& t) {
            any_output = true;
            written += tensor_bytes(t);
            const void* storage = storage_of(t);
            bool aliases = false;
            for (const void* s : frame->input_storages) aliases = aliases || (s && s == storage);
            all_alias = all_alias && aliases;
        });
    }
    if (any_output && all_alias && !frame->writes) return;
    add(name, frame->bytes_read, std::max(written, frame->bytes_of_written_arguments));
}

}  // namespace

extern "C" {

// Starts counting from zero (installs the callbacks on the first call).
void bf_ledger_start() {
    totals.launches = 0;
    totals.bytes_read = 0;
    totals.bytes_written = 0;
    {
        std::lock_guard<std::mutex> guard(by_operator_lock);
        by_operator.clear();
    }
    counting = true;
    if (!installed.exchange(true)) {
        handle = at::addGlobalCallback(at::RecordFunctionCallback(on_start, on_end)
                                           .needsInputs(true)
                                           .needsOutputs(true)
                                           .scopes({at::RecordScope::FUNCTION}));
    } else {
        at::reenableCallback(handle);
    }
}

// Stops counting and reads the totals since `bf_ledger_start`.
void bf_ledger_stop(int64_t* launches, int64_t* bytes_read, int64_t* bytes_written) {
    counting = false;
    if (installed.load()) at::disableCallback(handle);
    *launches = totals.launches.load();
    *bytes_read = totals.bytes_read.load();
    *bytes_written = totals.bytes_written.load();
}

// Whether this libtorch registers CUDA kernels (a CUDA build, as PyPI's wheel, GPU or not): the
// ledger counts as a GPU would launch only then, else operator by operator.
int bf_ledger_sees_cuda_kernels() {
    auto add = c10::Dispatcher::singleton().findOp({"aten::add", "Tensor"});
    return add && add->hasKernelForDispatchKey(c10::DispatchKey::CUDA) ? 1 : 0;
}

// Counts one launch of a kernel libtorch does not see (brainfloat's own), while counting.
void bf_ledger_record(const char* name, int64_t bytes_read, int64_t bytes_written) {
    if (!counting.load()) return;
    add(name, bytes_read, bytes_written);
}

// The totals by operator since `bf_ledger_start`, one line each: name, launches, bytes read,
// bytes written, tab-separated, into `out` (at most `len` bytes, NUL-terminated); the length
// the whole text needs (call again with more room when it is `len` or more).
size_t bf_ledger_operators(char* out, size_t len) {
    std::ostringstream text;
    {
        std::lock_guard<std::mutex> guard(by_operator_lock);
        for (const auto& [name, entry] : by_operator) {
            text << name << '\t' << entry.launches << '\t' << entry.bytes_read << '\t'
                 << entry.bytes_written << '\n';
        }
    }
    std::string all = text.str();
    if (len > 0) {
        size_t n = std::min(all.size(), len - 1);
        std::memcpy(out, all.data(), n);
        out[n] = '\0';
    }
    return all.size() + 1;
}

}  // extern "C"
