/* The model layer (core/model/): the GPT as forward/backward pairs over one
 * parameter block, its optimizer state, safetensors files, checkpoints and
 * generation. Built on the runtime's op API (tessera/runtime.h); knows
 * nothing of processes, data or the training loop. */
#ifndef TESSERA_MODEL_H
#define TESSERA_MODEL_H

#include "tessera/runtime.h"
#include "tessera/safetensors.h"
#include "tessera/gpt.h"
#include "tessera/optimizer.h"
#include "tessera/checkpoint.h"
#include "tessera/generate.h"
#include "tessera/convert.h"

#endif
