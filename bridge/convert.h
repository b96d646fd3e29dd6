/*-------------------------------------------------------------------------
 *
 * convert.h
 *		infra-bridge: Debezium's JSON values as PostgreSQL's text (convert.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef INFRA_BRIDGE_CONVERT_H
#define INFRA_BRIDGE_CONVERT_H

#include <stdbool.h>
#include <stdint.h>

#include "buf.h"
#include "change.h"
#include "json.h"

/* What an event's schema part says of a column (its field of after). */
typedef struct FieldInfo
{
	bool		found;
	bool		decimal;		/* name org.apache.kafka.connect.data.Decimal */
	bool		bytes;			/* type bytes */
	int64_t		units;			/* a timestamp's or time's units per second, 0: not named */
	bool		has_scale;		/* parameters.scale */
	int			scale;
} FieldInfo;

extern bool convert_value(const ChangePlan *plan, Buf *scratch, const ChangeColumn *c, const FieldInfo *f,
						  bool has_f, const JsonTree *t, int node, Buf *out, bool *null);
extern bool convert_integer(const char *s, long long *v);

/* PostgreSQL's text of a Decimal's bytes at scale, days since 1970, microseconds of a day or since 1970 */
extern bool decimal_text(Buf *b, const unsigned char *bytes, size_t n, int scale);
extern bool date_text(Buf *b, int64_t days);
extern void clock_text(Buf *b, int64_t us);
extern bool timestamp_text(Buf *b, int64_t us);

#endif							/* INFRA_BRIDGE_CONVERT_H */
