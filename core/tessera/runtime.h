/* The runtime layer (core/): errors and logs, tensors on devices, the
 * device registry, the device-agnostic op API and its profiler, the
 * communicator interface the layers above use. It dispatches every op to a
 * backend (backends/, through core/backend.h) and knows nothing of models
 * or training. Layers above: model (core/model), parallel (parallel/),
 * training (core/train), bench (bench/), the command (core/cli). */
#ifndef TESSERA_RUNTIME_H
#define TESSERA_RUNTIME_H

#include "tessera/status.h"
#include "tessera/tensor.h"
#include "tessera/device.h"
#include "tessera/ops.h"
#include "tessera/update.h"
#include "tessera/profile.h"
#include "tessera/comm.h"

#endif
