/* Pieces of the tensor-parallel backend shared between its files. */
#ifndef MG_TP_INTERNAL_H
#define MG_TP_INTERNAL_H

#include "tp.h"

/* Collectives between CPU ranks (comm_host.c). */
extern const mg_tp_comm_ops mg_tp_comm_host;

#endif
