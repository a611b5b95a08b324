/* The whole GPT in double precision on the host, built from the reference
 * ops, over a parameter blob laid out as tessera's (ts_gpt.info). */
#ifndef TESSERA_REFERENCE_MODEL_H
#define TESSERA_REFERENCE_MODEL_H

#include <stdint.h>

#include "tessera/gpt.h"

/* Mean cross-entropy over targets in [0, V). */
double ref_gpt_loss(const ts_gpt *layout, const double *params, const int32_t *tokens,
                    const int32_t *targets, int64_t B, int64_t T);

#endif
