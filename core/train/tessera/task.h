/* tessera's built-in task, for a default run that visibly learns in a
 * couple of minutes on a laptop CPU: sort a short random string of letters.
 * Each problem is "qmbx=bmqx\n" in byte tokens; rows of a batch pack whole
 * problems. Only the answer and its newline are scored (the random input is
 * unpredictable by design), so the loss goes to zero as the model learns. */
#ifndef TESSERA_TASK_H
#define TESSERA_TASK_H

#include <stdint.h>
#include <stdio.h>

#include "tessera/data.h"
#include "tessera/gpt.h"

#ifdef __cplusplus
extern "C" {
#endif

#define TS_TASK_MIN_LEN 3
#define TS_TASK_MAX_LEN 7
#define TS_TASK_ALPHABET 12 /* letters a..l */

ts_status ts_dataset_open_sort_task(ts_dataset *ds);
/* Greedy-decode n held-out problems, print `show` of them to out (may be
 * NULL), and return the share solved exactly. */
ts_status ts_sort_task_evaluate(ts_gpt *m, int n, uint64_t seed, int show, FILE *out,
                                double *accuracy);

#ifdef __cplusplus
}
#endif
#endif
