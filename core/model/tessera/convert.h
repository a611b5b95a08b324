/* Weights to and from other projects' formats (core/model/convert.c):
 * Hugging Face GPT-2 directories (config.json + model.safetensors in
 * GPT2LMHeadModel layout: "transformer." names, Conv1D matrices stored
 * [in, out], the head tied to wte) and llm.c's float32 model files
 * (gpt2_124M.bin layout). The model files are tessera's model.safetensors
 * (tessera/gpt.h); tokenizers are the caller's business. */
#ifndef TESSERA_CONVERT_H
#define TESSERA_CONVERT_H

#include "tessera/gpt.h"
#include "tessera/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* tessera model.safetensors -> DIR/config.json + DIR/model.safetensors. */
ts_status ts_convert_to_hf(const char *model_path, const char *dir);
/* DIR (a GPT-2 of tessera's shape: gelu_new, n_inner 4C, eps 1e-5, tied
 * head) -> tessera model.safetensors with `meta` (NULL-terminated key,
 * value pairs, may be NULL) in its metadata. */
ts_status ts_convert_from_hf(const char *dir, const char *model_path, const char *const *meta);
ts_status ts_convert_read_hf_config(const char *dir, ts_gpt_config *cfg);
/* tessera model.safetensors <-> llm.c model file (float32, version 3). */
ts_status ts_convert_to_llmc(const char *model_path, const char *bin_path);
ts_status ts_convert_from_llmc(const char *bin_path, const char *model_path, const char *const *meta);

#ifdef __cplusplus
}
#endif
#endif
