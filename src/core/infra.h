/*-------------------------------------------------------------------------
 *
 * infra.h
 *		Names shared by every module of the infra extension.
 *
 *-------------------------------------------------------------------------
 */
#ifndef INFRA_H
#define INFRA_H

#include "core/compat.h"

/* Version of the SQL API and of the library; infra.control must agree. */
#define INFRA_VERSION "1.2"

/* Name used for GUC prefix, LWLock tranche and log messages. */
#define INFRA_NAME "infra"

#endif							/* INFRA_H */
