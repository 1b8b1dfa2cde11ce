// A DurableBuffer that stores its values in clear, for benchmarks and tests only:
// branchline-microbench measures what sealing at rest costs against it, and tests
// whose premise needs values readable in the file (secure_delete, the
// sealed/clear mismatch) use it. bl_agent_buffer_testing is linked only by tests
// and bench/, never by a product binary; the product API (durable_buffer.h) has
// no way to turn sealing off.
#pragma once

#include <memory>

#include "agent/buffer/durable_buffer.h"

namespace branchline::agent::testing {

// DurableBuffer::open, except that no value is sealed and options.key_file is
// ignored (none is created). A buffer written in clear is refused
// (kInvalidArgument) by DurableBuffer::open, and a sealed one by this; a buffer
// in clear has no data key to rotate (rotateDataKey: kInvalidArgument).
Result<std::unique_ptr<DurableBuffer>> openPlaintextBuffer(BufferOptions options);

}  // namespace branchline::agent::testing
