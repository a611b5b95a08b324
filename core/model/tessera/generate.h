/* Text generation from a trained model: temperature, top-k and top-p
 * (nucleus) sampling, greedy at temperature 0, reproducible from a seed. */
#ifndef TESSERA_GENERATE_H
#define TESSERA_GENERATE_H

#include <stdint.h>

#include "tessera/gpt.h"
#include "tessera/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ts_sample_options {
    float temperature;   /* 0: greedy */
    int top_k;           /* 0: all tokens */
    uint64_t seed;
    int32_t stop_token;  /* stop after emitting it; -1: never */
    int64_t context;     /* positions the model sees per step (<= max_seq_len); 0: max_seq_len */
    float top_p;         /* keep the most likely tokens whose probabilities sum to top_p; 0 or 1: all */
} ts_sample_options;

/* Append up to max_new tokens to tokens[0..*n) (capacity cap). */
ts_status ts_generate(ts_gpt *m, int32_t *tokens, int64_t *n, int64_t cap, int64_t max_new,
                      const ts_sample_options *o);

#ifdef __cplusplus
}
#endif
#endif
