#include "agent/buffer/testing/plaintext_buffer.h"

#include <utility>

namespace branchline::agent::testing {

struct PlaintextBufferAccess {
  static Result<std::unique_ptr<DurableBuffer>> open(BufferOptions options) {
    return DurableBuffer::open(std::move(options), /*in_clear=*/true);
  }
};

Result<std::unique_ptr<DurableBuffer>> openPlaintextBuffer(BufferOptions options) {
  return PlaintextBufferAccess::open(std::move(options));
}

}  // namespace branchline::agent::testing
