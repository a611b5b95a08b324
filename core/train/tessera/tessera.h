/* tessera: a portable accelerator backend for training transformer language
 * models. One include for the whole public API, layer by layer.
 *
 * This is also the main header of the training layer (core/train/):
 * tokenizers, data, the built-in task and the training loop, on top of the
 * parallel layer (tessera/parallel.h), the model layer (tessera/model.h)
 * and the runtime (tessera/runtime.h). */
#ifndef TESSERA_H
#define TESSERA_H

#include "tessera/runtime.h"
#include "tessera/model.h"
#include "tessera/parallel.h"
#include "tessera/placement.h"
#include "tessera/tokenizer.h"
#include "tessera/data.h"
#include "tessera/task.h"
#include "tessera/train.h"

#define TESSERA_VERSION "0.1.0"

#endif
