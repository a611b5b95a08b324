/* tessera: a portable accelerator backend for training transformer language
 * models. One include for the whole public API. */
#ifndef TESSERA_H
#define TESSERA_H

#include "tessera/status.h"
#include "tessera/tensor.h"
#include "tessera/device.h"
#include "tessera/ops.h"
#include "tessera/optim.h"
#include "tessera/placement.h"
#include "tessera/safetensors.h"
#include "tessera/gpt.h"
#include "tessera/optimizer.h"
#include "tessera/tokenizer.h"
#include "tessera/data.h"
#include "tessera/checkpoint.h"
#include "tessera/generate.h"
#include "tessera/task.h"
#include "tessera/train.h"
#include "tessera/comm.h"
#include "tessera/parallel.h"
#include "tessera/bench.h"

#define TESSERA_VERSION "0.1.0"

#endif
