/*-------------------------------------------------------------------------
 *
 * change.h
 *		infra-bridge: Debezium's change events decoded, converted and
 *		reduced to each key's outcome in the bridge (change.c), by a plan
 *		debezium.c makes, so that the server only deletes and upserts typed
 *		rows.
 *
 *-------------------------------------------------------------------------
 */
#ifndef INFRA_BRIDGE_CHANGE_H
#define INFRA_BRIDGE_CHANGE_H

#include <libpq-fe.h>
#include <librdkafka/rdkafka.h>

#include "bridge.h"
#include "encode.h"

/* How a column's value is read from an event's JSON (by the column's type). */
typedef enum ColumnKind
{
	KIND_PLAIN,					/* the JSON scalar's text, cast */
	KIND_JSON,
	KIND_JSONB,
	KIND_BYTEA,
	KIND_NUMERIC,				/* numeric, money */
	KIND_DATE,
	KIND_TIMESTAMP,				/* without time zone */
	KIND_TIME,					/* without time zone */
	KIND_INTERVAL,
	KIND_ARRAY
} ColumnKind;

/* A key column's values compare as their text (else no plan). */
typedef enum KeyClass
{
	KEY_INT,					/* smallint, integer, bigint: a JSON integer */
	KEY_TEXT,					/* text, varchar of a deterministic collation */
	KEY_UUID					/* uuid, in its canonical lower-case text */
} KeyClass;

#define CHANGE_MAX_COLUMNS 256
#define CHANGE_MAX_KEYS 64

typedef struct ChangeColumn
{
	char		name[64];		/* the event's field */
	ColumnKind	kind;
	int			n;				/* numeric: scale (-1 none); timestamp, time: precision */
	bool		by_default;		/* left out of an event: the column's default */
} ChangeColumn;

/*
 * What change.c needs of a format = debezium route: its event columns (the
 * stage's c0..cN, the same order), its keys, its modes, and the statements
 * over the stage (seq, d: a deleted key, c0..cN as text).
 */
typedef struct ChangePlan
{
	const BridgeRoute *route;
	int			ncols;
	ChangeColumn cols[CHANGE_MAX_COLUMNS];
	int			nkeys;
	int			keys[CHANGE_MAX_KEYS];	/* indexes into cols */
	KeyClass	key_class[CHANGE_MAX_KEYS];
	int			key_of[CHANGE_MAX_COLUMNS];	/* per column: its index in keys, or -1 */
	char		forms[3][400];	/* the placeholder, its base64 and hex */
	int			gen;			/* the stage's generation, in its name */
	char	   *create;			/* CREATE TEMP TABLE the stage */
	char	   *copy;			/* COPY into it */
	char	   *delete;			/* DELETE the keys of the stage's d rows */
	char	   *upsert;			/* INSERT ... ON CONFLICT its other rows */
	char	   *truncate;		/* TRUNCATE the table (deletes = on) */
} ChangePlan;

typedef enum ChangeResult
{
	CHANGE_WRITTEN,
	CHANGE_STAGED,				/* nothing run: the range goes through the staging path */
	CHANGE_FAILED				/* a statement failed: *failed says why */
} ChangeResult;

extern ChangeResult change_apply(PGconn *conn, int slot, int route, const ChangePlan *plan,
								 rd_kafka_message_t **messages, const MsgBody *bodies, const int *routes,
								 int lo, int hi,
								 long long *written, PGresult **failed);
extern void change_forget(int slot);
extern bool change_direct_enabled(void);

#endif							/* INFRA_BRIDGE_CHANGE_H */
