/* The profiler's hooks around op dispatch (private to the runtime). */
#ifndef TESSERA_PROFILE_INTERNAL_H
#define TESSERA_PROFILE_INTERNAL_H

#include "backend.h"

/* Drain the device and start the clock; then drain again and book the op. */
double ts_profile_begin(ts_device *dev);
void ts_profile_end(ts_device *dev, const ts_op *op, double t0);

#endif
